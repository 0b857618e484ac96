// lora.cu: the LoRA plugin's in-place weight updates on the GPU, each a
// template body instantiated for fp32 (_f32) and fp16 (_f16) weight
// storage with fp32 arithmetic: W += a*D (full / norm / bias differences,
// or a LoRA difference built in fp32 scratch), W += a*(D1 ⊙ D2) (LoHa's
// Hadamard product of two low-rank products, built by cuBLAS), and
// W += a*kron(W1, W2) (LoKr, never materialising the Kronecker product).
// W is the flattened [out, in*kh*kw] weight, the layout of every target
// whatever its rank. One thread per element in a grid-stride loop. The
// plain LoRA product goes through cuBLAS GemmEx with beta 1 per module, or
// through lora_batch: every plain LoRA module of a swap in one launch,
// W = W_orig + a*(up @ down) (restore and patch fused) or W += a*(up @ down),
// a 32x64 tile of one module per block. Uses the prelude's half_t and
// to_f / from_f.

// w [n] += a * d[i]  (d fp32)
template <class T>
__device__ void lora_axpy(T* __restrict__ w, const float* __restrict__ d, float a, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        w[i] = from_f<T>(to_f(w[i]) + a * d[i]);
    }
}
extern "C" __global__ void lora_axpy_f32(float* w, const float* d, float a, long long n) { lora_axpy<float>(w, d, a, n); }
extern "C" __global__ void lora_axpy_f16(half_t* w, const float* d, float a, long long n) { lora_axpy<half_t>(w, d, a, n); }

// w [n] += a * (d1[i] * d2[i])  (LoHa: d1 = w1a @ w1b, d2 = w2a @ w2b, fp32)
template <class T>
__device__ void lora_hadamard(T* __restrict__ w, const float* __restrict__ d1, const float* __restrict__ d2, float a, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        w[i] = from_f<T>(to_f(w[i]) + a * (d1[i] * d2[i]));
    }
}
extern "C" __global__ void lora_hadamard_f32(float* w, const float* d1, const float* d2, float a, long long n) {
    lora_hadamard<float>(w, d1, d2, a, n);
}
extern "C" __global__ void lora_hadamard_f16(half_t* w, const float* d1, const float* d2, float a, long long n) {
    lora_hadamard<half_t>(w, d1, d2, a, n);
}

// w [A*B, C*N] += a * kron(w1 [A, C], w2 [B, N]):
// w[(i*B+p)*C*N + j*N+q] += a * (w1[i*C+j] * w2[p*N+q])  (LoKr; w1, w2 fp32)
template <class T>
__device__ void lora_kron(T* __restrict__ w, const float* __restrict__ w1, const float* __restrict__ w2, float a,
                          int A, int C, int B, int N) {
    long long cols = (long long)C * N;
    long long n = (long long)A * B * cols;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        long long row = e / cols, col = e - row * cols;
        int i = (int)(row / B), p = (int)(row - (long long)i * B);
        int j = (int)(col / N), q = (int)(col - (long long)j * N);
        w[e] = from_f<T>(to_f(w[e]) + a * (w1[i * C + j] * w2[(long long)p * N + q]));
    }
}
extern "C" __global__ void lora_kron_f32(float* w, const float* w1, const float* w2, float a, int A, int C, int B, int N) {
    lora_kron<float>(w, w1, w2, a, A, C, B, N);
}
extern "C" __global__ void lora_kron_f16(half_t* w, const float* w1, const float* w2, float a, int A, int C, int B, int N) {
    lora_kron<half_t>(w, w1, w2, a, A, C, B, N);
}

// lora_batch job table: loraJobWords int64 per job, jobs sorted by tile0.
//   [0] w      device address of W [out, in] (T)
//   [1] orig   device address of W's original [out, in] (T), 0: W in place
//   [2] up     device address of up [out, r] (T)
//   [3] down   device address of down [r, in] (T)
//   [4] out  [5] in  [6] r  [7] alpha (float bits)  [8] tile0 (first tile)
//   [9] column tiles (ceil(in / 64))
#define LORA_JOB_WORDS 10
#define LORA_TR 32
#define LORA_TC 64
#define LORA_TK 32

// Launch with 256 threads a block (the row split below assumes it) and
// one block per tile. One block computes one 32x64 tile of one module: thread t
// owns column t % 64 and rows (t / 64) * 8 .. + 8 of the tile, summing
// over r in chunks of 32 staged in shared memory (fp32 accumulation).
template <class T>
__device__ void lora_batch(const long long* __restrict__ jobs, int njobs) {
    __shared__ float su[LORA_TR][LORA_TK + 1]; // up tile [32 rows, 32 k]
    __shared__ float sd[LORA_TK][LORA_TC];     // down tile [32 k, 64 cols]
    long long tile = blockIdx.x;
    int lo = 0, hi = njobs - 1; // last job with tile0 <= tile
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (jobs[mid * LORA_JOB_WORDS + 8] <= tile) lo = mid; else hi = mid - 1;
    }
    const long long* j = jobs + lo * LORA_JOB_WORDS;
    T* w = (T*)j[0];
    const T* orig = (const T*)j[1];
    const T* up = (const T*)j[2];
    const T* down = (const T*)j[3];
    int out = (int)j[4], in = (int)j[5], r = (int)j[6];
    float a = __int_as_float((int)j[7]);
    long long local = tile - j[8];
    int row0 = (int)(local / j[9]) * LORA_TR, col0 = (int)(local % j[9]) * LORA_TC;
    int t = threadIdx.x, c = t % LORA_TC, rb = (t / LORA_TC) * 8;
    float acc[8];
    for (int i = 0; i < 8; i++) acc[i] = 0.f;
    for (int k0 = 0; k0 < r; k0 += LORA_TK) {
        for (int e = t; e < LORA_TR * LORA_TK; e += blockDim.x) {
            int rr = e / LORA_TK, kk = e % LORA_TK;
            int row = row0 + rr, k = k0 + kk;
            su[rr][kk] = (row < out && k < r) ? to_f(up[(long long)row * r + k]) : 0.f;
        }
        for (int e = t; e < LORA_TK * LORA_TC; e += blockDim.x) {
            int kk = e / LORA_TC, cc = e % LORA_TC;
            int col = col0 + cc, k = k0 + kk;
            sd[kk][cc] = (col < in && k < r) ? to_f(down[(long long)k * in + col]) : 0.f;
        }
        __syncthreads();
        for (int kk = 0; kk < LORA_TK; kk++) {
            float d = sd[kk][c];
            for (int i = 0; i < 8; i++) acc[i] += su[rb + i][kk] * d;
        }
        __syncthreads();
    }
    int col = col0 + c;
    if (col >= in) return;
    for (int i = 0; i < 8; i++) {
        int row = row0 + rb + i;
        if (row >= out) break;
        long long idx = (long long)row * in + col;
        float base = orig ? to_f(orig[idx]) : to_f(w[idx]);
        w[idx] = from_f<T>(base + a * acc[i]);
    }
}
extern "C" __global__ void __launch_bounds__(256) lora_batch_f32(const long long* jobs, int njobs) { lora_batch<float>(jobs, njobs); }
extern "C" __global__ void __launch_bounds__(256) lora_batch_f16(const long long* jobs, int njobs) { lora_batch<half_t>(jobs, njobs); }
