// conv.cu: 2-D convolution pieces. im2col for one batch item: cols
// [C*KH*KW, OH*OW] in the same row order as nn/conv.go (channel, ky, kx),
// zero outside the padded input (padding given as top and left; bottom and
// right only change OH, OW, so ldm's F.pad(x, (0, 1, 0, 1)) before a
// stride-2 conv is pad_t = pad_l = 0 with OH, OW counted on H+1, W+1),
// one template body over the storage type (im2col_f32, im2col_f16); the
// GEMM with the weights is cuBLAS's (GemmEx in fp16 with fp32
// accumulation). And conv_igemm_f16, an implicit-GEMM convolution on
// tensor cores for fp16 (below, with its own notes). No dilation or
// groups.
//
// Launch (im2col): 1-D blocks of 256 threads, grid ceil(C*KH*KW*OH*OW /
// 256) (capped at 2^20, grid-stride). On an H100 the cols buffer is 9x the
// input for a 3x3 conv (SD1.5 64x64, 320 channels: 23.6 MB fp16 per batch
// item) and is written then read once by the GEMM: conv_igemm_f16 removes
// that traffic, and batching all items in one GEMM (cols [C*9, B*OH*OW])
// fills the SMs better at small latents.

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

// ---- implicit GEMM (fp16, tensor cores) ----
//
// conv_igemm_f16: y[n] [OC, OH*OW] = w [OC, C*KH*KW] x cols(x[n]) (+ bias
// [OC]) (+ beta * y[n]), the im2col matrix never stored: each block
// gathers its [64 pixels x 32 k] slice of it straight from x into shared
// memory (zero where the window meets the padding; any kernel size,
// stride and top/left padding) next to the [64 oc x 32 k] weight slice,
// and 4 warps (2x2, 32x32 outputs each) multiply them with the prelude's
// mma_m16n8k16 into fp32 accumulators. Not used for fp32 storage (that
// stays on im2col + cuBLAS, the exact path).
//
// NVRTC 11.8 for sm_90: 55 registers, no stack frame.
//
// Launch (nn/cuda_conv.go, GPU.ConvAlgo = ConvImplicitGEMM): block 128
// threads, grid (ceil(OH*OW/64), ceil(OC/64), B), static shared
// 2*64*40*2 = 10 KB. For SD1.5 at 64x64 latents (320 channels, 3x3) that
// is 64*5*2 = 640 blocks and no 47 MB im2col buffer per call. Next steps
// on an H100: 16-byte (cp.async) weight loads and double-buffered tiles
// (loads overlap the MMAs, now load, sync, compute), ldmatrix for the
// fragments, 128x128 tiles with 8 warps, and a channels-last activation
// layout so a pixel's 9*C window is contiguous; compare with im2col +
// cuBLAS (cudacheck / bench) before making it the default.

#define IG_BM 64 // output channels per block
#define IG_BN 64 // output pixels per block
#define IG_BK 32 // reduction (c, ky, kx) per tile

__device__ void conv_igemm(const half_t* __restrict__ x, const half_t* __restrict__ w, const half_t* __restrict__ bias,
                           half_t* __restrict__ y, int C, int H, int W, int OC, int KH, int KW, int stride, int pad_t,
                           int pad_l, int OH, int OW, float beta) {
    __shared__ __align__(16) half_t As[IG_BM][IG_BK + 8]; // weights [oc][k]
    __shared__ __align__(16) half_t Bs[IG_BN][IG_BK + 8]; // gathered input [pixel][k]
    const half_t zero = 0;
    int K = C * KH * KW, khw = KH * KW, npix = OH * OW;
    int pix0 = blockIdx.x * IG_BN, oc0 = blockIdx.y * IG_BM;
    const half_t* xb = x + (long long)blockIdx.z * C * H * W;
    half_t* yb = y + (long long)blockIdx.z * OC * npix;
    int lane = threadIdx.x & 31, wp = threadIdx.x >> 5;
    int g = lane >> 2, t = lane & 3;
    int wm = (wp >> 1) * 32, wn = (wp & 1) * 32; // this warp's 32x32 corner
    float acc[2][4][4];
    for (int mi = 0; mi < 2; mi++)
        for (int ni = 0; ni < 4; ni++)
            for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += IG_BK) {
        __syncthreads(); // the previous tiles are consumed
        for (int i = threadIdx.x; i < IG_BM * IG_BK; i += blockDim.x) {
            int r = i / IG_BK, kk = i - r * IG_BK;
            int oc = oc0 + r, k = k0 + kk;
            As[r][kk] = oc < OC && k < K ? w[(long long)oc * K + k] : zero;
        }
        // Pixels fastest: neighbouring threads read neighbouring pixels.
        for (int i = threadIdx.x; i < IG_BN * IG_BK; i += blockDim.x) {
            int kk = i / IG_BN, nn = i - kk * IG_BN;
            int p = pix0 + nn, k = k0 + kk;
            half_t v = zero;
            if (p < npix && k < K) {
                int c = k / khw, r = k - c * khw;
                int ky = r / KW, kx = r - ky * KW;
                int oy = p / OW, ox = p - oy * OW;
                int iy = oy * stride - pad_t + ky, ix = ox * stride - pad_l + kx;
                if (iy >= 0 && iy < H && ix >= 0 && ix < W) v = xb[((long long)c * H + iy) * W + ix];
            }
            Bs[nn][kk] = v;
        }
        __syncthreads();
        for (int ks = 0; ks < IG_BK; ks += 16) {
            unsigned af[2][4];
            for (int mi = 0; mi < 2; mi++) {
                const half_t* ar = &As[wm + mi * 16 + g][ks + 2 * t];
                const half_t* ar8 = &As[wm + mi * 16 + g + 8][ks + 2 * t];
                af[mi][0] = ld_h2(ar);
                af[mi][1] = ld_h2(ar8);
                af[mi][2] = ld_h2(ar + 8);
                af[mi][3] = ld_h2(ar8 + 8);
            }
            for (int ni = 0; ni < 4; ni++) {
                const half_t* br = &Bs[wn + ni * 8 + g][ks + 2 * t];
                unsigned bf[2] = {ld_h2(br), ld_h2(br + 8)};
                for (int mi = 0; mi < 2; mi++) mma_m16n8k16(acc[mi][ni], af[mi], bf, acc[mi][ni]);
            }
        }
    }
    for (int mi = 0; mi < 2; mi++)
        for (int ni = 0; ni < 4; ni++)
            for (int e = 0; e < 4; e++) {
                int oc = oc0 + wm + mi * 16 + g + 8 * (e >> 1);
                int p = pix0 + wn + ni * 8 + 2 * t + (e & 1);
                if (oc >= OC || p >= npix) continue;
                long long o = (long long)oc * npix + p;
                float v = acc[mi][ni][e] + (bias ? h2f(bias[oc]) : 0.0f);
                if (beta != 0.0f) v += beta * h2f(yb[o]); // y is not read when beta = 0 (it may hold NaN)
                yb[o] = f2h(v);
            }
}
extern "C" __global__ void __launch_bounds__(128) conv_igemm_f16(const half_t* __restrict__ x, const half_t* __restrict__ w,
                                                                 const half_t* __restrict__ bias, half_t* __restrict__ y, int C,
                                                                 int H, int W, int OC, int KH, int KW, int stride, int pad_t,
                                                                 int pad_l, int OH, int OW, float beta) {
    conv_igemm(x, w, bias, y, C, H, W, OC, KH, KW, stride, pad_t, pad_l, OH, OW, beta);
}
