// norm.cu: group norm (with an optional per-(batch, channel) add before it
// and SiLU after it, the U-Net ResBlock's "h + temb -> norm2 -> SiLU" in
// one pass of writes), layer norm and row softmax; each one template body
// over the storage type T (float or half_t) with fp32 statistics,
// instantiated as _f32 and _f16. Statistics are two-pass (mean, then
// centred variance) like the CPU reference in nn/norm.go. Uses the
// prelude's block_sum / block_max. Group norm moves 16 bytes per access
// where aligned; every element is still read from global memory three
// times (sum, centred squares, output).
//
// Launch (nn/cuda_ops.go): group norm grid = B*G blocks (one per group of
// one batch item) of 32..1024 threads (one per 8 elements, so a large
// group has 16 KB of loads in flight per SM); layer norm and softmax 256
// threads, grid = rows. On an H100: SD1.5 at 64x64 latents has only
// 2*32 = 64 groups for 132 SMs, each group 40960 elements: split a group
// over a thread block cluster (distributed shared memory for the partial
// sums) or over blocks with a second small kernel, and keep the group in
// shared memory (fp16: 80 KB, opt-in dynamic shared) or registers so it
// is read from HBM once; vectorise layer norm the same way.

// x, y [B, C, HW] (y may be x); pre [B, C] (pre_b = C) or [C] (pre_b = 0)
// or null, added to x before the statistics (a time embedding, or a conv's
// bias folded into the norm after it); w, b [C] or null. grid = B*G blocks, any multiple of 32
// threads. When HW is a multiple of 16 bytes' worth of T and x, y are
// 16-byte aligned, every access moves 16 bytes (one channel per chunk).
template <class T>
__device__ void group_norm_ex(const T* x, T* y, const T* __restrict__ pre, const T* __restrict__ w, const T* __restrict__ b,
                              int C, int HW, int G, float eps, int silu, long long pre_b) {
    __shared__ float sh[33];
    const int V = VEC16<T>::N;
    int task = blockIdx.x;
    int n = task / G, g = task % G;
    int cg = C / G;
    long long len = (long long)cg * HW;
    long long base = ((long long)n * C + (long long)g * cg) * HW;
    const T* xs = x + base;
    T* ys = y + base;
    const T* ps = pre ? pre + n * pre_b + (long long)g * cg : nullptr;
    bool vec = HW % V == 0 && aligned16(xs) && aligned16(ys);
    long long nv = vec ? len / V : 0; // 16-byte chunks; the scalar loops take the rest (all of it when !vec)
    float s = 0.0f;
    for (long long iv = threadIdx.x; iv < nv; iv += blockDim.x) {
        float f[V];
        load16(xs + iv * V, f);
        float p = ps ? to_f(ps[iv * V / HW]) : 0.0f;
        for (int e = 0; e < V; e++) s += f[e] + p;
    }
    for (long long i = nv * V + threadIdx.x; i < len; i += blockDim.x) s += to_f(xs[i]) + (ps ? to_f(ps[i / HW]) : 0.0f);
    float mean = block_sum(s, sh) / (float)len;
    float v = 0.0f;
    for (long long iv = threadIdx.x; iv < nv; iv += blockDim.x) {
        float f[V];
        load16(xs + iv * V, f);
        float p = (ps ? to_f(ps[iv * V / HW]) : 0.0f) - mean;
        for (int e = 0; e < V; e++) v += (f[e] + p) * (f[e] + p);
    }
    for (long long i = nv * V + threadIdx.x; i < len; i += blockDim.x) {
        float d = to_f(xs[i]) + (ps ? to_f(ps[i / HW]) : 0.0f) - mean;
        v += d * d;
    }
    float inv = rsqrtf(block_sum(v, sh) / (float)len + eps);
    for (long long iv = threadIdx.x; iv < nv; iv += blockDim.x) {
        int cl = (int)(iv * V / HW), ch = g * cg + cl;
        float f[V];
        load16(xs + iv * V, f);
        float p = (ps ? to_f(ps[cl]) : 0.0f) - mean;
        float sc = w ? inv * to_f(w[ch]) : inv, sh0 = b ? to_f(b[ch]) : 0.0f;
        for (int e = 0; e < V; e++) {
            float o = (f[e] + p) * sc + sh0;
            f[e] = silu ? o / (1.0f + expf(-o)) : o;
        }
        store16(ys + iv * V, f);
    }
    for (long long i = nv * V + threadIdx.x; i < len; i += blockDim.x) {
        int cl = (int)(i / HW);
        int ch = g * cg + cl;
        float o = (to_f(xs[i]) + (ps ? to_f(ps[cl]) : 0.0f) - mean) * inv;
        if (w) o *= to_f(w[ch]);
        if (b) o += to_f(b[ch]);
        if (silu) o = o / (1.0f + expf(-o));
        ys[i] = from_f<T>(o);
    }
}
extern "C" __global__ void group_norm_f32(const float* __restrict__ x, float* __restrict__ y,
                                          const float* __restrict__ w, const float* __restrict__ b,
                                          int C, int HW, int G, float eps, int silu) {
    group_norm_ex<float>(x, y, nullptr, w, b, C, HW, G, eps, silu, 0);
}
extern "C" __global__ void group_norm_f16(const half_t* __restrict__ x, half_t* __restrict__ y,
                                          const half_t* __restrict__ w, const half_t* __restrict__ b,
                                          int C, int HW, int G, float eps, int silu) {
    group_norm_ex<half_t>(x, y, nullptr, w, b, C, HW, G, eps, silu, 0);
}
extern "C" __global__ void group_norm_ex_f32(const float* x, float* y, const float* __restrict__ pre,
                                             const float* __restrict__ w, const float* __restrict__ b,
                                             int C, int HW, int G, float eps, int silu, long long pre_b) {
    group_norm_ex(x, y, pre, w, b, C, HW, G, eps, silu, pre_b);
}
extern "C" __global__ void group_norm_ex_f16(const half_t* x, half_t* y, const half_t* __restrict__ pre,
                                             const half_t* __restrict__ w, const half_t* __restrict__ b,
                                             int C, int HW, int G, float eps, int silu, long long pre_b) {
    group_norm_ex(x, y, pre, w, b, C, HW, G, eps, silu, pre_b);
}

// x, y [rows, D] (y may be x); w, b [D] or null. grid = rows.
template <class T>
__device__ void layer_norm(const T* x, T* y, const T* __restrict__ w, const T* __restrict__ b, int D, float eps) {
    __shared__ float sh[33];
    const T* xr = x + (long long)blockIdx.x * D;
    T* yr = y + (long long)blockIdx.x * D;
    float s = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) s += to_f(xr[i]);
    float mean = block_sum(s, sh) / (float)D;
    float v = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float d = to_f(xr[i]) - mean;
        v += d * d;
    }
    float inv = rsqrtf(block_sum(v, sh) / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float o = (to_f(xr[i]) - mean) * inv;
        if (w) o *= to_f(w[i]);
        if (b) o += to_f(b[i]);
        yr[i] = from_f<T>(o);
    }
}
extern "C" __global__ void layer_norm_f32(const float* __restrict__ x, float* __restrict__ y,
                                          const float* __restrict__ w, const float* __restrict__ b,
                                          int D, float eps) {
    layer_norm(x, y, w, b, D, eps);
}
extern "C" __global__ void layer_norm_f16(const half_t* __restrict__ x, half_t* __restrict__ y,
                                          const half_t* __restrict__ w, const half_t* __restrict__ b,
                                          int D, float eps) {
    layer_norm(x, y, w, b, D, eps);
}

// x [rows, n] in place: x = softmax(scale * x) per row. grid = rows.
template <class T> __device__ void softmax_rows(T* __restrict__ x, int n, float scale) {
    __shared__ float sh[33];
    T* xr = x + (long long)blockIdx.x * n;
    float m = neg_inf();
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, scale * to_f(xr[i]));
    m = block_max(m, sh);
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += expf(scale * to_f(xr[i]) - m);
    float inv = 1.0f / block_sum(s, sh);
    for (int i = threadIdx.x; i < n; i += blockDim.x) xr[i] = from_f<T>(expf(scale * to_f(xr[i]) - m) * inv);
}
extern "C" __global__ void softmax_rows_f32(float* __restrict__ x, int n, float scale) { softmax_rows(x, n, scale); }
extern "C" __global__ void softmax_rows_f16(half_t* __restrict__ x, int n, float scale) { softmax_rows(x, n, scale); }
