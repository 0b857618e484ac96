// conv.cu: im2col for a 2-D convolution of one batch item: cols
// [C*KH*KW, OH*OW] in the same row order as nn/conv.go (channel, ky, kx),
// zero outside the padded input (padding given as top and left; bottom and
// right only change OH, OW, so ldm's F.pad(x, (0, 1, 0, 1)) before a
// stride-2 conv is pad_t = pad_l = 0 with OH, OW counted on H+1, W+1),
// one template body over the storage type
// (im2col_f32, im2col_f16). The GEMM with the weights is cuBLAS's (GemmEx
// in fp16 with fp32 accumulation). No dilation or groups; not an implicit
// GEMM yet.
//
// Launch: 1-D blocks of 256 threads, grid ceil(C*KH*KW*OH*OW / 256)
// (capped at 2^20, grid-stride). On an H100 the cols buffer is 9x the
// input for a 3x3 conv (SD1.5 64x64, 320 channels: 23.6 MB fp16 per batch
// item) and is written then read once by the GEMM: an implicit-GEMM conv
// (tiles of the input gathered into shared memory, mma_m16n8k16 or
// cuBLASLt/cuDNN) removes that traffic, and batching all items in one
// GEMM (cols [C*9, B*OH*OW]) fills the SMs better at small latents.

// x [C, H, W] -> cols [C*KH*KW, OH*OW].
template <class T>
__device__ void im2col(const T* __restrict__ x, T* __restrict__ cols, int C, int H, int W, int KH, int KW, int stride, int pad_t,
                       int pad_l, int OH, int OW) {
    long long npix = (long long)OH * OW;
    long long n = (long long)C * KH * KW * npix;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long row = i / npix;
        int p = (int)(i - row * npix);
        int kx = (int)(row % KW);
        int ky = (int)((row / KW) % KH);
        int c = (int)(row / ((long long)KW * KH));
        int oy = p / OW, ox = p % OW;
        int iy = oy * stride - pad_t + ky, ix = ox * stride - pad_l + kx;
        T v = from_f<T>(0.0f);
        if (iy >= 0 && iy < H && ix >= 0 && ix < W) v = x[((long long)c * H + iy) * W + ix];
        cols[i] = v;
    }
}
extern "C" __global__ void im2col_f32(const float* __restrict__ x, float* __restrict__ cols, int C, int H, int W, int KH, int KW,
                                      int stride, int pad_t, int pad_l, int OH, int OW) {
    im2col(x, cols, C, H, W, KH, KW, stride, pad_t, pad_l, OH, OW);
}
extern "C" __global__ void im2col_f16(const half_t* __restrict__ x, half_t* __restrict__ cols, int C, int H, int W, int KH, int KW,
                                      int stride, int pad_t, int pad_l, int OH, int OW) {
    im2col(x, cols, C, H, W, KH, KW, stride, pad_t, pad_l, OH, OW);
}
