// plugins.cu: small kernels of the plugins' GPU paths, each a template
// body instantiated for fp32 (_f32) and fp16 (_f16) storage with fp32
// arithmetic: writing a scaled ControlNet residual into the host's buffer
// (overwrite or accumulate), the same after replacing every H x W plane by
// its mean (shuffle nets), and copying the leading channels of a batch
// (the 4 latent channels of a 9-channel inpainting input). Uses the
// prelude's half_t, to_f / from_f and block_sum. Not tuned.

// out [n] = s * r  (acc 0)  or  out += s * r  (acc 1)
template <class T>
__device__ void scale_into(T* __restrict__ out, const T* __restrict__ r, float s, int acc, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float v = s * to_f(r[i]);
        out[i] = from_f<T>(acc ? to_f(out[i]) + v : v);
    }
}
extern "C" __global__ void scale_into_f32(float* out, const float* r, float s, int acc, long long n) {
    scale_into<float>(out, r, s, acc, n);
}
extern "C" __global__ void scale_into_f16(half_t* out, const half_t* r, float s, int acc, long long n) {
    scale_into<half_t>(out, r, s, acc, n);
}

// One block per plane of hw values: out plane = s * mean(r plane)
// (acc 0) or += it (acc 1). blockDim.x a multiple of 32.
template <class T>
__device__ void plane_mean_into(T* __restrict__ out, const T* __restrict__ r, float s, int acc, int hw) {
    __shared__ float sh[33];
    long long base = (long long)blockIdx.x * hw;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < hw; i += blockDim.x) sum += to_f(r[base + i]);
    float m = s * (block_sum(sum, sh) / (float)hw);
    for (int i = threadIdx.x; i < hw; i += blockDim.x) {
        out[base + i] = from_f<T>(acc ? to_f(out[base + i]) + m : m);
    }
}
extern "C" __global__ void plane_mean_into_f32(float* out, const float* r, float s, int acc, int hw) {
    plane_mean_into<float>(out, r, s, acc, hw);
}
extern "C" __global__ void plane_mean_into_f16(half_t* out, const half_t* r, float s, int acc, int hw) {
    plane_mean_into<half_t>(out, r, s, acc, hw);
}

// x [B, C, hw] -> y [B, K, hw]: the first K of C channels of each item.
template <class T>
__device__ void lead_channels(const T* __restrict__ x, T* __restrict__ y, int C, int K, long long hw, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long per = (long long)K * hw;
        long long b = i / per, rest = i - b * per;
        y[i] = x[b * C * hw + rest];
    }
}
extern "C" __global__ void lead_channels_f32(const float* x, float* y, int C, int K, long long hw, long long n) {
    lead_channels<float>(x, y, C, K, hw, n);
}
extern "C" __global__ void lead_channels_f16(const half_t* x, half_t* y, int C, int K, long long hw, long long n) {
    lead_channels<half_t>(x, y, C, K, hw, n);
}
