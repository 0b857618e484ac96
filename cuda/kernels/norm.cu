// norm.cu: group norm (+ optional fused SiLU), layer norm and row softmax,
// fp32, one thread block per normalised segment or row. Statistics are
// two-pass (mean, then centred variance) like the CPU reference in
// nn/norm.go. Not tuned: every element is read from global memory two or
// three times.

__device__ float block_sum(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    if (wid == 0) {
        v = lane < nw ? sh[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) sh[32] = v;
    }
    __syncthreads();
    return sh[32];
}

__device__ float block_max(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    if (wid == 0) {
        v = lane < nw ? sh[lane] : __int_as_float(0xff800000);
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (lane == 0) sh[32] = v;
    }
    __syncthreads();
    return sh[32];
}

// x, y [B, C, HW]; w, b [C] or null. grid = B*G blocks.
extern "C" __global__ void group_norm_f32(const float* __restrict__ x, float* __restrict__ y,
                                          const float* __restrict__ w, const float* __restrict__ b,
                                          int C, int HW, int G, float eps, int silu) {
    __shared__ float sh[33];
    int task = blockIdx.x;
    int n = task / G, g = task % G;
    int cg = C / G;
    long long len = (long long)cg * HW;
    long long base = ((long long)n * C + (long long)g * cg) * HW;
    const float* xs = x + base;
    float* ys = y + base;
    float s = 0.0f;
    for (long long i = threadIdx.x; i < len; i += blockDim.x) s += xs[i];
    float mean = block_sum(s, sh) / (float)len;
    float v = 0.0f;
    for (long long i = threadIdx.x; i < len; i += blockDim.x) {
        float d = xs[i] - mean;
        v += d * d;
    }
    float inv = rsqrtf(block_sum(v, sh) / (float)len + eps);
    for (long long i = threadIdx.x; i < len; i += blockDim.x) {
        int ch = g * cg + (int)(i / HW);
        float o = (xs[i] - mean) * inv;
        if (w) o *= w[ch];
        if (b) o += b[ch];
        if (silu) o = o / (1.0f + expf(-o));
        ys[i] = o;
    }
}

// x, y [rows, D]; w, b [D] or null. grid = rows.
extern "C" __global__ void layer_norm_f32(const float* __restrict__ x, float* __restrict__ y,
                                          const float* __restrict__ w, const float* __restrict__ b,
                                          int D, float eps) {
    __shared__ float sh[33];
    const float* xr = x + (long long)blockIdx.x * D;
    float* yr = y + (long long)blockIdx.x * D;
    float s = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) s += xr[i];
    float mean = block_sum(s, sh) / (float)D;
    float v = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float d = xr[i] - mean;
        v += d * d;
    }
    float inv = rsqrtf(block_sum(v, sh) / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float o = (xr[i] - mean) * inv;
        if (w) o *= w[i];
        if (b) o += b[i];
        yr[i] = o;
    }
}

// x [rows, n] in place: x = softmax(scale * x) per row. grid = rows.
extern "C" __global__ void softmax_rows_f32(float* __restrict__ x, int n, float scale) {
    __shared__ float sh[33];
    float* xr = x + (long long)blockIdx.x * n;
    float m = __int_as_float(0xff800000);
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, scale * xr[i]);
    m = block_max(m, sh);
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float e = expf(scale * xr[i] - m);
        xr[i] = e;
        s += e;
    }
    float inv = 1.0f / block_sum(s, sh);
    for (int i = threadIdx.x; i < n; i += blockDim.x) xr[i] *= inv;
}
