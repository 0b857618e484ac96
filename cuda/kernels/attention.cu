// attention.cu: flash-style scaled dot-product attention, softmax(scale *
// q k^T + bias, masked) v, one pass over the keys with an online softmax
// in fp32, never materialising the [Lq, Lk] scores. q [B, Lq, *], k, v
// [B, Lk, *], out [B, Lq, *], with head h at columns h*D..h*D+D-1 of each
// row and a row stride per tensor (a fused QKV projection can be read in
// place). Options: scale, an additive bias [1|B, 1|H, Lq, Lk] (T5's
// position bias; strides 0 broadcast), a key mask [B, Lk] (nonzero keep,
// 0 drop; padding), causal masking (key j visible to query i iff j <= i,
// CLIP). A query row that sees no key gets zeros.
//
// Two kernels:
//   flash_attn_f16_d<DP>: fp16 storage, tensor cores (the prelude's
//     mma_m16n8k16) for both q k^T and p v, fp32 accumulators, P rounded
//     to fp16 for the second product (as FlashAttention-2). DP is the head
//     dim padded to a multiple of 16 (instantiated for 16..160; the
//     padding is zero-filled inside the kernel, so D = 40 runs as 48).
//   flash_attn_simt_<T>: plain fp32 arithmetic for any D <= 160 (the
//     exact path of GPUF32 runs, and a reference for the fp16 kernel).
//   flash_attn_f16_wide_d<DP> (DP = 256, 512): fp16 tensor-core kernel
//     for wide heads (the VAE's one 512-wide head): the head dim is split
//     over DP/64 warps, each holding its 64 columns of q (16 registers)
//     and of the output accumulator (32) for 16 query rows; q k^T partial
//     sums over the column slices meet in shared memory (summed in warp
//     order, so every warp sees the same scores and runs the same online
//     softmax), then each warp multiplies P by its slice of V.
//   flash_attn_wide_simt_<T>: fp32 arithmetic for 160 < D <= 512, one warp
//     per query row, keys one at a time (score = warp sum over D, 16
//     columns per lane), K and V read straight from global memory.
// None handles dropout or D > 512.
//
// Launch (nn/cuda_attention.go):
//   flash_attn_f16_d<DP>: block 128 threads = 4 warps x 16 query rows,
//     grid (ceil(Lq/64), H, B), static shared 64*(DP+8)*2 + DP*(64+8)*2
//     bytes (44.5 KB at DP=160); key tiles of 64, loaded 16 bytes per
//     thread when D and the row strides are multiples of 8 halves.
//   flash_attn_simt_<T>: block 128 threads = 4 warps x 2 query rows,
//     grid (ceil(Lq/8), H, B), dynamic shared (8+64)*(D+1)*4 bytes.
//   flash_attn_f16_wide_d<DP>: block DP/64 warps (256 threads at DP=512),
//     grid (ceil(Lq/16), H, B), static shared max(32*(DP+8), DP*40)*2
//     bytes (40 KB at DP=512): one buffer holding the key tile, then the
//     fp32 partial scores, then the transposed value tile (5 barriers per
//     tile of 32 keys).
//   flash_attn_wide_simt_<T>: block 128 threads = 4 warps x 1 query row,
//     grid (ceil(Lq/4), H, B), no shared memory.
// On an H100 (SD1.5 64x64: Lq = Lk = 4096, D = 40/80/160, 8 heads, B=2)
// the f16 kernel would gain most from: double-buffered K/V tiles with
// cp.async or TMA, so loads overlap the MMAs (now load, sync, compute);
// ldmatrix / ldmatrix.trans for the fragments instead of the transposing
// scalar stores into Vt; 128 query rows per block with 8 warps (K/V
// reuse) or wgmma (sm_90a) for the full Hopper rate; fewer registers
// (NVRTC 11.8 ptxas -v for sm_90: d160 210 registers, d128 173, d96 168
// with 72 bytes spilled, d80/d64 128 (d64 4 bytes spilled), d48 120,
// d32 96, d16 80; SIMT 48; no other spills), so that more than 2 blocks
// (8 warps) fit an SM at the SD1.5 head dims; and,
// for D = 40, 48-wide tiles waste 17% of the q k^T MMAs on padding.
// The wide kernel (VAE mid-block, Lq = Lk = 4096 at 512px, one head of
// 512): 256 blocks per batch item of 8 warps; each block reads all of K
// and V once for only 16 query rows (K/V traffic 256x 4 MB per item, from
// L2 mostly); 32 or 64 query rows per block (2-4 m-tiles per warp, more
// accumulator registers) and cp.async double-buffered tiles are the next
// steps (tiles are loaded 16 bytes per thread when D and the row strides
// are multiples of 8 halves). NVRTC 11.8 for sm_90 (nn's TestKernelRegistersNVRTC reads the
// CUBIN): wide_d512 123 registers, wide_d256 101, wide_simt 85, none with
// a stack frame (no spills); at 123 x 256 threads, 2 blocks (16 warps)
// fit an SM by registers, 5 by the 40 KB of shared memory.
// Cross-attention (Lk = 77) has two key tiles; ceil(4096/64)*8*2 = 1024
// blocks still fill 132 SMs.

#define FA_LOG2E 1.4426950408889634f

// fa_visible applies the masks: key kj of query qi in batch item b.
template <class T>
__device__ __forceinline__ bool fa_visible(const T* kmask, int b, int Lk, int qi, int kj, int causal) {
    if (kj >= Lk) return false;
    if (causal && kj > qi) return false;
    if (kmask && to_f(kmask[(long long)b * Lk + kj]) == 0.0f) return false;
    return true;
}

// fa_scale_mask turns one warp's 16 x 8NJ score tile s (mma C fragments:
// lane group g holds rows q0+g and q0+g+8, keys k0+8j+2t..) into log2
// units with the bias added, invisible keys at -inf.
template <int NJ>
__device__ __forceinline__ void fa_scale_mask(float (&s)[NJ][4], int q0, int k0, int g, int t, const half_t* kmask,
                                              const half_t* bb, int b, int Lq, int Lk, int causal, float sl2) {
    for (int j = 0; j < NJ; j++)
        for (int e = 0; e < 4; e++) {
            int qi = q0 + g + 8 * (e >> 1), kj = k0 + j * 8 + 2 * t + (e & 1);
            bool ok = fa_visible(kmask, b, Lk, qi, kj, causal);
            float x = s[j][e] * sl2;
            if (ok && bb && qi < Lq) x += h2f(bb[(long long)qi * Lk + kj]) * FA_LOG2E;
            s[j][e] = ok ? x : neg_inf();
        }
}

// fa_online_softmax advances the online softmax of the tile's two rows
// (the 4 lanes of a group share a row): new running max mrow, sum lrow,
// the output accumulators oacc rescaled, and s replaced by P = 2^(s - max).
template <int NJ, int NO>
__device__ __forceinline__ void fa_online_softmax(float (&s)[NJ][4], float (&oacc)[NO][4], float mrow[2], float lrow[2]) {
    for (int rh = 0; rh < 2; rh++) {
        float mt = neg_inf();
        for (int j = 0; j < NJ; j++) mt = fmaxf(mt, fmaxf(s[j][2 * rh], s[j][2 * rh + 1]));
        mt = fmaxf(mt, __shfl_xor_sync(SDB_FULL_MASK, mt, 1));
        mt = fmaxf(mt, __shfl_xor_sync(SDB_FULL_MASK, mt, 2));
        float mn = fmaxf(mrow[rh], mt);
        float mu = mn == neg_inf() ? 0.0f : mn;
        float alpha = exp2f(mrow[rh] - mu);
        mrow[rh] = mn;
        float ls = 0.0f;
        for (int j = 0; j < NJ; j++)
            for (int e = 2 * rh; e < 2 * rh + 2; e++) {
                float p = exp2f(s[j][e] - mu);
                s[j][e] = p;
                ls += p;
            }
        lrow[rh] = lrow[rh] * alpha + ls;
        for (int n = 0; n < NO; n++) {
            oacc[n][2 * rh] *= alpha;
            oacc[n][2 * rh + 1] *= alpha;
        }
    }
}

// ---- fp32 SIMT kernel ----

#define FA_SIMT_ROWS 8  // query rows per block: 4 warps x 2
#define FA_SIMT_KEYS 32 // keys per tile: one per lane
#define FA_SIMT_DL 5    // ceil(160 / 32) output columns per lane

template <class T>
__device__ void flash_simt(float* smem, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
                           const T* __restrict__ bias, const T* __restrict__ kmask, int H, int Lq, int Lk, int D, int sq, int sk,
                           int sv, int so, float scale, int causal, long long bias_b, long long bias_h) {
    int Dp = D + 1; // odd row stride: lanes reading different keys hit different banks
    float* Qs = smem;                     // [FA_SIMT_ROWS][Dp]
    float* Ks = Qs + FA_SIMT_ROWS * Dp;   // [FA_SIMT_KEYS][Dp]
    float* Vs = Ks + FA_SIMT_KEYS * Dp;   // [FA_SIMT_KEYS][Dp]
    int b = blockIdx.z, h = blockIdx.y, row0 = blockIdx.x * FA_SIMT_ROWS;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const T* qb = q + (long long)b * Lq * sq + (long long)h * D;
    const T* kb = k + (long long)b * Lk * sk + (long long)h * D;
    const T* vb = v + (long long)b * Lk * sv + (long long)h * D;
    T* ob = o + (long long)b * Lq * so + (long long)h * D;
    const T* bb = bias ? bias + b * bias_b + h * bias_h : nullptr;
    for (int i = threadIdx.x; i < FA_SIMT_ROWS * D; i += blockDim.x) {
        int r = i / D, d = i - r * D;
        Qs[r * Dp + d] = row0 + r < Lq ? to_f(qb[(long long)(row0 + r) * sq + d]) : 0.0f;
    }
    float m[2], l[2], acc[2][FA_SIMT_DL];
    for (int rr = 0; rr < 2; rr++) {
        m[rr] = neg_inf();
        l[rr] = 0.0f;
        for (int i = 0; i < FA_SIMT_DL; i++) acc[rr][i] = 0.0f;
    }
    int kend = causal ? min(Lk, row0 + FA_SIMT_ROWS) : Lk;
    for (int k0 = 0; k0 < kend; k0 += FA_SIMT_KEYS) {
        __syncthreads(); // the previous tile is consumed (and Qs written)
        for (int i = threadIdx.x; i < FA_SIMT_KEYS * D; i += blockDim.x) {
            int j = i / D, d = i - j * D;
            bool in = k0 + j < Lk;
            Ks[j * Dp + d] = in ? to_f(kb[(long long)(k0 + j) * sk + d]) : 0.0f;
            Vs[j * Dp + d] = in ? to_f(vb[(long long)(k0 + j) * sv + d]) : 0.0f;
        }
        __syncthreads();
        for (int rr = 0; rr < 2; rr++) {
            int r = w * 2 + rr, qi = row0 + r, kj = k0 + lane;
            float s = 0.0f;
            for (int d = 0; d < D; d++) s += Qs[r * Dp + d] * Ks[lane * Dp + d];
            s *= scale;
            bool ok = fa_visible(kmask, b, Lk, qi, kj, causal);
            if (ok && bb && qi < Lq) s += to_f(bb[(long long)qi * Lk + kj]);
            s = ok ? s : neg_inf();
            float mn = fmaxf(m[rr], warp_max(s));
            float mu = mn == neg_inf() ? 0.0f : mn; // nothing visible yet: every p is 0
            float p = expf(s - mu);
            float alpha = expf(m[rr] - mu);
            l[rr] = l[rr] * alpha + warp_sum(p);
            m[rr] = mn;
            for (int i = 0; i < FA_SIMT_DL; i++) acc[rr][i] *= alpha;
            for (int j = 0; j < FA_SIMT_KEYS; j++) {
                float pj = __shfl_sync(SDB_FULL_MASK, p, j);
                for (int i = 0; i < FA_SIMT_DL; i++) {
                    int d = lane + 32 * i;
                    if (d < D) acc[rr][i] += pj * Vs[j * Dp + d];
                }
            }
        }
    }
    for (int rr = 0; rr < 2; rr++) {
        int qi = row0 + w * 2 + rr;
        if (qi >= Lq) continue;
        float inv = l[rr] > 0.0f ? 1.0f / l[rr] : 0.0f;
        for (int i = 0; i < FA_SIMT_DL; i++) {
            int d = lane + 32 * i;
            if (d < D) ob[(long long)qi * so + d] = from_f<T>(acc[rr][i] * inv);
        }
    }
}

#define FA_PARAMS(T)                                                                                                    \
    const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v, T *__restrict__ o,                      \
        const T *__restrict__ bias, const T *__restrict__ kmask, int H, int Lq, int Lk, int D, int sq, int sk, int sv, \
        int so, float scale, int causal, long long bias_b, long long bias_h
#define FA_ARGS q, k, v, o, bias, kmask, H, Lq, Lk, D, sq, sk, sv, so, scale, causal, bias_b, bias_h

extern "C" __global__ void __launch_bounds__(128) flash_attn_simt_f32(FA_PARAMS(float)) {
    extern __shared__ float fa_smem_f32[];
    flash_simt(fa_smem_f32, FA_ARGS);
}
extern "C" __global__ void __launch_bounds__(128) flash_attn_simt_f16(FA_PARAMS(half_t)) {
    extern __shared__ float fa_smem_f16[];
    flash_simt(fa_smem_f16, FA_ARGS);
}

// ---- fp16 tensor-core kernel ----

#define FA_BQ 64 // query rows per block: 4 warps x 16
#define FA_BK 64 // keys per tile

template <int DP>
__device__ void flash_mma(FA_PARAMS(half_t)) {
    // K tile as [key][dim], V tile transposed to [dim][key], so both MMA
    // B fragments are pairs of adjacent halves (one 32-bit shared load);
    // the +8 halves of padding spread a fragment's rows over all banks.
    __shared__ __align__(16) half_t Ks[FA_BK][DP + 8];
    __shared__ __align__(16) half_t Vt[DP][FA_BK + 8];
    const int NK = DP / 16; // k-steps of q k^T
    const int ND = DP / 8;  // n-tiles of the output
    int b = blockIdx.z, h = blockIdx.y, qblk = blockIdx.x * FA_BQ;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int g = lane >> 2, t = lane & 3;
    int q0 = qblk + w * 16;
    const half_t* qb = q + (long long)b * Lq * sq + (long long)h * D;
    const half_t* kb = k + (long long)b * Lk * sk + (long long)h * D;
    const half_t* vb = v + (long long)b * Lk * sv + (long long)h * D;
    half_t* ob = o + (long long)b * Lq * so + (long long)h * D;
    const half_t* bb = bias ? bias + b * bias_b + h * bias_h : nullptr;
    const half_t zero = 0;
    // 16-byte tile loads when every row start is 16-byte aligned.
    bool vec = ((D | sk | sv) & 7) == 0 && (((unsigned long long)kb | (unsigned long long)vb) & 15) == 0;

    // This warp's 16 query rows as A fragments (rows g and g+8).
    unsigned qa[NK][4];
    for (int kk = 0; kk < NK; kk++) {
        for (int half = 0; half < 2; half++) { // columns 2t.. and 2t+8..
            int c = kk * 16 + 2 * t + 8 * half;
            for (int rh = 0; rh < 2; rh++) { // rows g and g+8
                int r = q0 + g + 8 * rh;
                const half_t* qr = qb + (long long)r * sq;
                half_t lo = r < Lq && c < D ? qr[c] : zero;
                half_t hi = r < Lq && c + 1 < D ? qr[c + 1] : zero;
                qa[kk][2 * half + rh] = pack_h2(lo, hi);
            }
        }
    }
    float oacc[ND][4];
    for (int n = 0; n < ND; n++)
        for (int e = 0; e < 4; e++) oacc[n][e] = 0.0f;
    float mrow[2] = {neg_inf(), neg_inf()}, lrow[2] = {0.0f, 0.0f};
    float sl2 = scale * FA_LOG2E;

    int kend = causal ? min(Lk, qblk + FA_BQ) : Lk;
    for (int k0 = 0; k0 < kend; k0 += FA_BK) {
        __syncthreads();
        if (vec) {
            // Chunks of 8 halves; consecutive threads take consecutive keys
            // of one chunk, so the transposed V stores hit distinct banks.
            for (int i = threadIdx.x; i < FA_BK * (DP / 8); i += blockDim.x) {
                int j = i % FA_BK, c = (i / FA_BK) * 8;
                bool in = k0 + j < Lk && c < D;
                uint4 vv;
                if (in) {
                    copy8h(&Ks[j][c], kb + (long long)(k0 + j) * sk + c);
                    copy8h((half_t*)&vv, vb + (long long)(k0 + j) * sv + c);
                } else {
                    zero8h(&Ks[j][c]);
                    zero8h((half_t*)&vv);
                }
                unsigned wv[4] = {vv.x, vv.y, vv.z, vv.w};
                for (int e = 0; e < 8; e++) Vt[c + e][j] = (half_t)((e & 1) ? wv[e >> 1] >> 16 : wv[e >> 1] & 0xffffu);
            }
        } else {
            for (int i = threadIdx.x; i < FA_BK * DP; i += blockDim.x) {
                int j = i % FA_BK, d = i / FA_BK;
                bool in = k0 + j < Lk && d < D;
                Ks[j][d] = in ? kb[(long long)(k0 + j) * sk + d] : zero;
                Vt[d][j] = in ? vb[(long long)(k0 + j) * sv + d] : zero;
            }
        }
        __syncthreads();

        // S = q k^T for 8 n-tiles of 8 keys.
        float s[FA_BK / 8][4];
        for (int j = 0; j < FA_BK / 8; j++) {
            for (int e = 0; e < 4; e++) s[j][e] = 0.0f;
            const half_t* kr = &Ks[j * 8 + g][2 * t];
            for (int kk = 0; kk < NK; kk++) {
                unsigned bf[2] = {ld_h2(kr + kk * 16), ld_h2(kr + kk * 16 + 8)};
                mma_m16n8k16(s[j], qa[kk], bf, s[j]);
            }
        }
        // Scale, bias and masks in log2 units, then the online softmax
        // per row (the 4 lanes of a group share a row).
        fa_scale_mask(s, q0, k0, g, t, kmask, bb, b, Lq, Lk, causal, sl2);
        fa_online_softmax(s, oacc, mrow, lrow);
        // O += P V, P taken from the S accumulators as A fragments.
        for (int kk = 0; kk < FA_BK / 16; kk++) {
            unsigned pa[4] = {pack_h2(f2h(s[2 * kk][0]), f2h(s[2 * kk][1])), pack_h2(f2h(s[2 * kk][2]), f2h(s[2 * kk][3])),
                              pack_h2(f2h(s[2 * kk + 1][0]), f2h(s[2 * kk + 1][1])),
                              pack_h2(f2h(s[2 * kk + 1][2]), f2h(s[2 * kk + 1][3]))};
            for (int n = 0; n < ND; n++) {
                const half_t* vr = &Vt[n * 8 + g][kk * 16 + 2 * t];
                unsigned bf[2] = {ld_h2(vr), ld_h2(vr + 8)};
                mma_m16n8k16(oacc[n], pa, bf, oacc[n]);
            }
        }
    }
    float inv[2];
    for (int rh = 0; rh < 2; rh++) {
        float l = lrow[rh];
        l += __shfl_xor_sync(SDB_FULL_MASK, l, 1);
        l += __shfl_xor_sync(SDB_FULL_MASK, l, 2);
        inv[rh] = l > 0.0f ? 1.0f / l : 0.0f;
    }
    for (int n = 0; n < ND; n++)
        for (int e = 0; e < 4; e++) {
            int qi = q0 + g + 8 * (e >> 1), c = n * 8 + 2 * t + (e & 1);
            if (qi < Lq && c < D) ob[(long long)qi * so + c] = f2h(oacc[n][e] * inv[e >> 1]);
        }
}

extern "C" __global__ void __launch_bounds__(128) flash_attn_f16_d16(FA_PARAMS(half_t)) { flash_mma<16>(FA_ARGS); }
extern "C" __global__ void __launch_bounds__(128) flash_attn_f16_d32(FA_PARAMS(half_t)) { flash_mma<32>(FA_ARGS); }
extern "C" __global__ void __launch_bounds__(128) flash_attn_f16_d48(FA_PARAMS(half_t)) { flash_mma<48>(FA_ARGS); }
extern "C" __global__ void __launch_bounds__(128) flash_attn_f16_d64(FA_PARAMS(half_t)) { flash_mma<64>(FA_ARGS); }
extern "C" __global__ void __launch_bounds__(128) flash_attn_f16_d80(FA_PARAMS(half_t)) { flash_mma<80>(FA_ARGS); }
extern "C" __global__ void __launch_bounds__(128) flash_attn_f16_d96(FA_PARAMS(half_t)) { flash_mma<96>(FA_ARGS); }
extern "C" __global__ void __launch_bounds__(128) flash_attn_f16_d128(FA_PARAMS(half_t)) { flash_mma<128>(FA_ARGS); }
extern "C" __global__ void __launch_bounds__(128) flash_attn_f16_d160(FA_PARAMS(half_t)) { flash_mma<160>(FA_ARGS); }

// ---- wide heads (160 < D <= 512) ----

#define FA_WROWS 16 // query rows per block of the wide fp16 kernel
#define FA_WKEYS 32 // keys per tile of the wide fp16 kernel
#define FA_WCOLS 64 // head columns per warp

template <int DP>
__device__ void flash_mma_wide(FA_PARAMS(half_t)) {
    const int NW = DP / FA_WCOLS;                                      // warps
    const int KS = (FA_WKEYS * (DP + 8) > DP * (FA_WKEYS + 8)) ? FA_WKEYS * (DP + 8) : DP * (FA_WKEYS + 8);
    // One buffer, three uses per key tile: K as [key][DP+8], then the
    // partial scores as float [NW][16][FA_WKEYS], then V^T as [DP][FA_WKEYS+8].
    __shared__ __align__(16) half_t buf[KS];
    float* part = reinterpret_cast<float*>(buf);
    int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * FA_WROWS;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int g = lane >> 2, t = lane & 3;
    int c0 = w * FA_WCOLS; // this warp's head columns c0..c0+63
    const half_t* qb = q + (long long)b * Lq * sq + (long long)h * D;
    const half_t* kb = k + (long long)b * Lk * sk + (long long)h * D;
    const half_t* vb = v + (long long)b * Lk * sv + (long long)h * D;
    half_t* ob = o + (long long)b * Lq * so + (long long)h * D;
    const half_t* bb = bias ? bias + b * bias_b + h * bias_h : nullptr;
    const half_t zero = 0;
    // 16-byte tile loads when every row start is 16-byte aligned.
    bool vec = ((D | sk | sv) & 7) == 0 && (((unsigned long long)kb | (unsigned long long)vb) & 15) == 0;

    unsigned qa[FA_WCOLS / 16][4]; // A fragments of q[q0.., c0..c0+63]
    for (int kk = 0; kk < FA_WCOLS / 16; kk++)
        for (int hf = 0; hf < 2; hf++) {
            int c = c0 + kk * 16 + 2 * t + 8 * hf;
            for (int rh = 0; rh < 2; rh++) {
                int r = q0 + g + 8 * rh;
                const half_t* qr = qb + (long long)r * sq;
                half_t lo = r < Lq && c < D ? qr[c] : zero;
                half_t hi = r < Lq && c + 1 < D ? qr[c + 1] : zero;
                qa[kk][2 * hf + rh] = pack_h2(lo, hi);
            }
        }
    float oacc[FA_WCOLS / 8][4];
    for (int n = 0; n < FA_WCOLS / 8; n++)
        for (int e = 0; e < 4; e++) oacc[n][e] = 0.0f;
    float mrow[2] = {neg_inf(), neg_inf()}, lrow[2] = {0.0f, 0.0f};
    float sl2 = scale * FA_LOG2E;

    int kend = causal ? min(Lk, q0 + FA_WROWS) : Lk;
    for (int k0 = 0; k0 < kend; k0 += FA_WKEYS) {
        __syncthreads(); // the previous V tile is consumed
        if (vec) {
            for (int i = threadIdx.x; i < FA_WKEYS * (DP / 8); i += blockDim.x) {
                int j = i / (DP / 8), c = (i - j * (DP / 8)) * 8;
                if (k0 + j < Lk && c < D)
                    copy8h(&buf[j * (DP + 8) + c], kb + (long long)(k0 + j) * sk + c);
                else
                    zero8h(&buf[j * (DP + 8) + c]);
            }
        } else {
            for (int i = threadIdx.x; i < FA_WKEYS * DP; i += blockDim.x) {
                int j = i / DP, d = i - j * DP;
                buf[j * (DP + 8) + d] = k0 + j < Lk && d < D ? kb[(long long)(k0 + j) * sk + d] : zero;
            }
        }
        __syncthreads();
        // Partial S over this warp's columns: 4 n-tiles of 8 keys.
        float s[FA_WKEYS / 8][4];
        for (int j = 0; j < FA_WKEYS / 8; j++) {
            for (int e = 0; e < 4; e++) s[j][e] = 0.0f;
            const half_t* kr = &buf[(j * 8 + g) * (DP + 8) + c0 + 2 * t];
            for (int kk = 0; kk < FA_WCOLS / 16; kk++) {
                unsigned bf[2] = {ld_h2(kr + kk * 16), ld_h2(kr + kk * 16 + 8)};
                mma_m16n8k16(s[j], qa[kk], bf, s[j]);
            }
        }
        __syncthreads(); // K is consumed: the buffer takes the partial sums
        for (int j = 0; j < FA_WKEYS / 8; j++)
            for (int e = 0; e < 4; e++)
                part[(w * 16 + g + 8 * (e >> 1)) * FA_WKEYS + j * 8 + 2 * t + (e & 1)] = s[j][e];
        __syncthreads();
        for (int j = 0; j < FA_WKEYS / 8; j++)
            for (int e = 0; e < 4; e++) {
                int off = (g + 8 * (e >> 1)) * FA_WKEYS + j * 8 + 2 * t + (e & 1);
                float x = 0.0f;
                for (int ww = 0; ww < NW; ww++) x += part[ww * 16 * FA_WKEYS + off];
                s[j][e] = x;
            }
        __syncthreads(); // partial sums are consumed: the buffer takes V^T
        if (vec) {
            // Consecutive threads take consecutive keys of one 8-column
            // chunk, so the transposing stores hit distinct banks.
            for (int i = threadIdx.x; i < FA_WKEYS * (DP / 8); i += blockDim.x) {
                int j = i % FA_WKEYS, c = (i / FA_WKEYS) * 8;
                uint4 vv = make_uint4(0, 0, 0, 0);
                if (k0 + j < Lk && c < D) copy8h((half_t*)&vv, vb + (long long)(k0 + j) * sv + c);
                unsigned wv[4] = {vv.x, vv.y, vv.z, vv.w};
                for (int e = 0; e < 8; e++)
                    buf[(c + e) * (FA_WKEYS + 8) + j] = (half_t)((e & 1) ? wv[e >> 1] >> 16 : wv[e >> 1] & 0xffffu);
            }
        } else {
            for (int i = threadIdx.x; i < FA_WKEYS * DP; i += blockDim.x) {
                int j = i / DP, d = i - j * DP;
                buf[d * (FA_WKEYS + 8) + j] = k0 + j < Lk && d < D ? vb[(long long)(k0 + j) * sv + d] : zero;
            }
        }
        // Scale, bias and masks in log2 units, then the online softmax
        // (the same in every warp: same sums in the same order).
        fa_scale_mask(s, q0, k0, g, t, kmask, bb, b, Lq, Lk, causal, sl2);
        fa_online_softmax(s, oacc, mrow, lrow);
        __syncthreads(); // V^T is in place
        for (int kk = 0; kk < FA_WKEYS / 16; kk++) {
            unsigned pa[4] = {pack_h2(f2h(s[2 * kk][0]), f2h(s[2 * kk][1])), pack_h2(f2h(s[2 * kk][2]), f2h(s[2 * kk][3])),
                              pack_h2(f2h(s[2 * kk + 1][0]), f2h(s[2 * kk + 1][1])),
                              pack_h2(f2h(s[2 * kk + 1][2]), f2h(s[2 * kk + 1][3]))};
            for (int n = 0; n < FA_WCOLS / 8; n++) {
                const half_t* vr = &buf[(c0 + n * 8 + g) * (FA_WKEYS + 8) + kk * 16 + 2 * t];
                unsigned bf[2] = {ld_h2(vr), ld_h2(vr + 8)};
                mma_m16n8k16(oacc[n], pa, bf, oacc[n]);
            }
        }
    }
    float inv[2];
    for (int rh = 0; rh < 2; rh++) {
        float l = lrow[rh];
        l += __shfl_xor_sync(SDB_FULL_MASK, l, 1);
        l += __shfl_xor_sync(SDB_FULL_MASK, l, 2);
        inv[rh] = l > 0.0f ? 1.0f / l : 0.0f;
    }
    for (int n = 0; n < FA_WCOLS / 8; n++)
        for (int e = 0; e < 4; e++) {
            int qi = q0 + g + 8 * (e >> 1), c = c0 + n * 8 + 2 * t + (e & 1);
            if (qi < Lq && c < D) ob[(long long)qi * so + c] = f2h(oacc[n][e] * inv[e >> 1]);
        }
}

extern "C" __global__ void __launch_bounds__(128) flash_attn_f16_wide_d256(FA_PARAMS(half_t)) { flash_mma_wide<256>(FA_ARGS); }
extern "C" __global__ void __launch_bounds__(256) flash_attn_f16_wide_d512(FA_PARAMS(half_t)) { flash_mma_wide<512>(FA_ARGS); }

#define FA_WIDE_DL 16 // 512 / 32 head columns per lane

template <class T>
__device__ void flash_wide_simt(FA_PARAMS(T)) {
    int b = blockIdx.z, h = blockIdx.y;
    int lane = threadIdx.x & 31, qi = blockIdx.x * 4 + (threadIdx.x >> 5);
    if (qi >= Lq) return; // whole warps: no block barrier below
    const T* qr = q + ((long long)b * Lq + qi) * sq + (long long)h * D;
    const T* kb = k + (long long)b * Lk * sk + (long long)h * D;
    const T* vb = v + (long long)b * Lk * sv + (long long)h * D;
    T* orow = o + ((long long)b * Lq + qi) * so + (long long)h * D;
    const T* br = bias ? bias + b * bias_b + h * bias_h + (long long)qi * Lk : nullptr;
    float qv[FA_WIDE_DL], acc[FA_WIDE_DL];
    for (int i = 0; i < FA_WIDE_DL; i++) {
        int d = lane + 32 * i;
        qv[i] = d < D ? to_f(qr[d]) : 0.0f;
        acc[i] = 0.0f;
    }
    float m = neg_inf(), l = 0.0f;
    int kend = causal ? min(Lk, qi + 1) : Lk;
    for (int j = 0; j < kend; j++) {
        if (!fa_visible(kmask, b, Lk, qi, j, causal)) continue; // the same for every lane
        const T* kr = kb + (long long)j * sk;
        float s = 0.0f;
        for (int i = 0; i < FA_WIDE_DL; i++) {
            int d = lane + 32 * i;
            if (d < D) s += qv[i] * to_f(kr[d]);
        }
        s = warp_sum(s) * scale;
        if (br) s += to_f(br[j]);
        float mn = fmaxf(m, s);
        float alpha = expf(m - mn), p = expf(s - mn);
        l = l * alpha + p;
        m = mn;
        const T* vr = vb + (long long)j * sv;
        for (int i = 0; i < FA_WIDE_DL; i++) {
            int d = lane + 32 * i;
            acc[i] = acc[i] * alpha + (d < D ? p * to_f(vr[d]) : 0.0f);
        }
    }
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int i = 0; i < FA_WIDE_DL; i++) {
        int d = lane + 32 * i;
        if (d < D) orow[d] = from_f<T>(acc[i] * inv);
    }
}

extern "C" __global__ void __launch_bounds__(128) flash_attn_wide_simt_f32(FA_PARAMS(float)) { flash_wide_simt(FA_ARGS); }
extern "C" __global__ void __launch_bounds__(128) flash_attn_wide_simt_f16(FA_PARAMS(half_t)) { flash_wide_simt(FA_ARGS); }
