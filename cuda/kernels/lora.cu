// lora.cu: the LoRA plugin's in-place weight updates on the GPU, each a
// template body instantiated for fp32 (_f32) and fp16 (_f16) weight
// storage with fp32 arithmetic: W += a*D (full / norm / bias differences,
// or a LoRA difference built in fp32 scratch), W += a*(D1 ⊙ D2) (LoHa's
// Hadamard product of two low-rank products, built by cuBLAS), and
// W += a*kron(W1, W2) (LoKr, never materialising the Kronecker product).
// W is the flattened [out, in*kh*kw] weight, the layout of every target
// whatever its rank. One thread per element in a grid-stride loop; the
// plain LoRA product itself goes through cuBLAS GemmEx with beta 1, not
// through this file. Uses the prelude's half_t and to_f / from_f.

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
