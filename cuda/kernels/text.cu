// text.cu: the kernels only the text models need (CLIP, T5, ELLA's
// connector), each as one template body instantiated for fp32 (_f32) and
// fp16 storage (_f16) with fp32 arithmetic: token embedding gather (+ the
// position embedding), T5's RMSNorm, the activations named by the models'
// configs (in place, or multiplied by a gate as in T5's gated FF), ELLA's
// AdaLayerNorm modulation (optionally after a non-affine layer norm), the
// latents + time row broadcast add, and a dtype cast. Attention is not
// here (attention.cu has the causal / bias / no-scale options the text
// models need). Uses the prelude's half_t, to_f / from_f and block
// reductions. Not tuned: one thread per element or one block per row,
// normalised rows read from global memory two or three times.

// Activation kinds, as nn.TextAct numbers them.
#define TEXT_RELU 0
#define TEXT_GELU 1
#define TEXT_GELU_TANH 2
#define TEXT_QUICK_GELU 3
#define TEXT_SILU 4
#define TEXT_SQUARED_RELU 5

// text_act applies activation kind to v (the maths of nn's CPU versions).
__device__ float text_act(float v, int kind) {
    switch (kind) {
    case TEXT_RELU:
        return fmaxf(v, 0.0f);
    case TEXT_GELU:
        return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case TEXT_GELU_TANH: {
        float y = 0.7978845608028654f * (v + 0.044715f * v * v * v);
        return 0.5f * v * (1.0f + (1.0f - 2.0f / (expf(2.0f * y) + 1.0f)));
    }
    case TEXT_QUICK_GELU:
        return v / (1.0f + expf(-1.702f * v));
    case TEXT_SILU:
        return v / (1.0f + expf(-v));
    default: { // TEXT_SQUARED_RELU
        float r = fmaxf(v, 0.0f);
        return r * r;
    }
    }
}

// out [R, C] = table[ids[r]] (+ pos[r % L] when pos is not null); table
// [V, C], pos [P >= L, C], ids [R] checked by the caller.
template <class T>
__device__ void embed_rows(const T* __restrict__ table, const int* __restrict__ ids, const T* __restrict__ pos,
                           T* __restrict__ out, int R, int L, int C) {
    long long n = (long long)R * C;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        int r = (int)(i / C), c = (int)(i - (long long)r * C);
        float v = to_f(table[(long long)ids[r] * C + c]);
        if (pos) v += to_f(pos[(long long)(r % L) * C + c]);
        out[i] = from_f<T>(v);
    }
}
extern "C" __global__ void embed_rows_f32(const float* table, const int* ids, const float* pos, float* out, int R, int L, int C) {
    embed_rows<float>(table, ids, pos, out, R, L, C);
}
extern "C" __global__ void embed_rows_f16(const half_t* table, const int* ids, const half_t* pos, half_t* out, int R, int L, int C) {
    embed_rows<half_t>(table, ids, pos, out, R, L, C);
}

// T5LayerNorm: y = w * (x * 1/sqrt(mean(x^2) + eps)) per row of D; x, y
// [rows, D], w [D]. grid = rows.
template <class T>
__device__ void rms_norm(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, int D, float eps) {
    __shared__ float sh[33];
    const T* xr = x + (long long)blockIdx.x * D;
    T* yr = y + (long long)blockIdx.x * D;
    float s = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float v = to_f(xr[i]);
        s += v * v;
    }
    float inv = 1.0f / sqrtf(block_sum(s, sh) / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) yr[i] = from_f<T>(to_f(w[i]) * (to_f(xr[i]) * inv));
}
extern "C" __global__ void rms_norm_f32(const float* x, const float* w, float* y, int D, float eps) {
    rms_norm<float>(x, w, y, D, eps);
}
extern "C" __global__ void rms_norm_f16(const half_t* x, const half_t* w, half_t* y, int D, float eps) {
    rms_norm<half_t>(x, w, y, D, eps);
}

// x [n] in place: act(x), or act(x) * gate when gate is not null (T5's
// gated feed-forward: hidden_gelu * hidden_linear).
template <class T>
__device__ void text_activate(T* __restrict__ x, const T* __restrict__ gate, long long n, int kind) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float v = text_act(to_f(x[i]), kind);
        if (gate) v *= to_f(gate[i]);
        x[i] = from_f<T>(v);
    }
}
extern "C" __global__ void text_activate_f32(float* x, const float* gate, long long n, int kind) {
    text_activate<float>(x, gate, n, kind);
}
extern "C" __global__ void text_activate_f16(half_t* x, const half_t* gate, long long n, int kind) {
    text_activate<half_t>(x, gate, n, kind);
}

// ELLA's AdaLayerNorm: y[b, i] = n(x[b % Bx, i]) * (1 + scale) + shift with
// (shift, scale) = mod[b % Bm] [2W] (shift first) and n the non-affine
// layer norm (two-pass statistics) when norm != 0, else the identity. x
// [Bx, L, W], mod [Bm, 2W], y [max(Bx, Bm), L, W]. grid = max(Bx, Bm) * L.
template <class T>
__device__ void ada_norm(const T* __restrict__ x, const T* __restrict__ mod, T* __restrict__ y, int Bx, int Bm, int L,
                         int W, float eps, int norm) {
    __shared__ float sh[33];
    int b = blockIdx.x / L, i = blockIdx.x % L;
    const T* xr = x + ((long long)(b % Bx) * L + i) * W;
    const T* shift = mod + (long long)(b % Bm) * 2 * W;
    const T* scale = shift + W;
    T* yr = y + (long long)blockIdx.x * W;
    float mean = 0.0f, inv = 1.0f;
    if (norm) {
        float s = 0.0f;
        for (int c = threadIdx.x; c < W; c += blockDim.x) s += to_f(xr[c]);
        mean = block_sum(s, sh) / (float)W;
        float v = 0.0f;
        for (int c = threadIdx.x; c < W; c += blockDim.x) {
            float d = to_f(xr[c]) - mean;
            v += d * d;
        }
        inv = 1.0f / sqrtf(block_sum(v, sh) / (float)W + eps);
    }
    for (int c = threadIdx.x; c < W; c += blockDim.x) {
        float h = (to_f(xr[c]) - mean) * inv;
        yr[c] = from_f<T>(h * (1.0f + to_f(scale[c])) + to_f(shift[c]));
    }
}
extern "C" __global__ void ada_norm_f32(const float* x, const float* mod, float* y, int Bx, int Bm, int L, int W, float eps, int norm) {
    ada_norm<float>(x, mod, y, Bx, Bm, L, W, eps, norm);
}
extern "C" __global__ void ada_norm_f16(const half_t* x, const half_t* mod, half_t* y, int Bx, int Bm, int L, int W, float eps, int norm) {
    ada_norm<half_t>(x, mod, y, Bx, Bm, L, W, eps, norm);
}

// y[b, q, c] = a[q, c] + rows[b, c]: a [Q, W], rows [B, W], y [B, Q, W]
// (ELLA: latents[None] + time_aware_linear(silu(temb))[:, None]).
template <class T>
__device__ void add_outer_rows(const T* __restrict__ a, const T* __restrict__ rows, T* __restrict__ y, int Q, int W, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long qw = (long long)Q * W;
        long long b = i / qw, j = i - b * qw;
        int c = (int)(j % W);
        y[i] = from_f<T>(to_f(a[j]) + to_f(rows[b * W + c]));
    }
}
extern "C" __global__ void add_outer_rows_f32(const float* a, const float* rows, float* y, int Q, int W, long long n) {
    add_outer_rows<float>(a, rows, y, Q, W, n);
}
extern "C" __global__ void add_outer_rows_f16(const half_t* a, const half_t* rows, half_t* y, int Q, int W, long long n) {
    add_outer_rows<half_t>(a, rows, y, Q, W, n);
}

// Casts [n] elements: cast_f32 reads fp32 and writes fp16 (round to
// nearest even), cast_f16 reads fp16 and writes fp32.
extern "C" __global__ void cast_f32(const float* __restrict__ x, half_t* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = from_f<half_t>(x[i]);
}
extern "C" __global__ void cast_f16(const half_t* __restrict__ x, float* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = to_f(x[i]);
}
