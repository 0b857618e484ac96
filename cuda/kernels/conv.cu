// conv.cu: im2col for a 2-D convolution of one batch item, fp32: cols
// [C*KH*KW, OH*OW] in the same row order as nn/conv.go (channel, ky, kx),
// zero outside the padded input. The GEMM with the weights is cuBLAS's.
// No dilation or groups; not an implicit GEMM yet.

// x [C, H, W] -> cols [C*KH*KW, OH*OW].
extern "C" __global__ void im2col_f32(const float* __restrict__ x, float* __restrict__ cols,
                                      int C, int H, int W, int KH, int KW, int stride, int pad,
                                      int OH, int OW) {
    long long npix = (long long)OH * OW;
    long long n = (long long)C * KH * KW * npix;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long row = i / npix;
        int p = (int)(i - row * npix);
        int kx = (int)(row % KW);
        int ky = (int)((row / KW) % KH);
        int c = (int)(row / ((long long)KW * KH));
        int oy = p / OW, ox = p % OW;
        int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
        float v = 0.0f;
        if (iy >= 0 && iy < H && ix >= 0 && ix < W) v = x[((long long)c * H + iy) * W + ix];
        cols[i] = v;
    }
}
