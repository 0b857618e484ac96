// prelude.cuh: the common device code cuda.KernelSource prepends to every
// kernel file, so the .cu files include no headers (NVRTC ships none we
// can rely on). It provides the fp16 storage type half_t with IEEE
// round-to-nearest-even conversions, to_f / from_f templates so one
// kernel body serves float and half_t, 16-byte vector loads and stores,
// warp and block reductions, and the tensor-core MMA m16n8k16 (f16 x f16
// -> f32). Everything written in
// inline PTX has a plain C++ twin under SDB_EMU (the CPU emulator of
// cuda/cudatest), written only with the emulated CUDA built-ins. It holds
// no kernels, and no bf16 or fp8 types.

typedef unsigned short half_t;

#define SDB_FULL_MASK 0xffffffffu

#ifndef SDB_EMU

// h2f widens an IEEE binary16 to float (exact).
__device__ __forceinline__ float h2f(half_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// f2h rounds a float to the nearest binary16, ties to even; overflow gives
// infinity, NaN stays NaN, small values become subnormals or zero.
__device__ __forceinline__ half_t f2h(float f) {
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

#else // SDB_EMU: the same conversions by bit arithmetic.

__device__ __forceinline__ float h2f(half_t h) {
    unsigned sign = (unsigned)(h >> 15) << 31;
    unsigned exp = (h >> 10) & 0x1fu;
    unsigned mant = h & 0x3ffu;
    if (exp == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0) return __uint_as_float(sign);
        // Subnormal: mant * 2^-24, exact in float.
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

__device__ __forceinline__ half_t f2h(float f) {
    unsigned b = __float_as_uint(f);
    unsigned sign = (b >> 16) & 0x8000u;
    int exp = (int)((b >> 23) & 0xffu) - 127;
    unsigned mant = b & 0x7fffffu;
    if (exp == 128) return (half_t)(sign | (mant ? 0x7e00u : 0x7c00u)); // NaN (quiet) or Inf
    if (exp > 15) return (half_t)(sign | 0x7c00u);                      // overflow
    if (exp >= -14) {                                                   // normal half
        unsigned h = sign | ((unsigned)(exp + 15) << 10) | (mant >> 13);
        unsigned rest = mant & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++; // a carry into the exponent is right
        return (half_t)h;
    }
    if (exp >= -25) { // subnormal half (or rounds up to the smallest one)
        unsigned m = mant | 0x800000u;
        unsigned shift = (unsigned)(-14 - exp) + 13u;
        unsigned h = m >> shift;
        unsigned rest = m & ((1u << shift) - 1u);
        unsigned halfway = 1u << (shift - 1u);
        if (rest > halfway || (rest == halfway && (h & 1u))) h++;
        return (half_t)(sign | h);
    }
    return (half_t)sign;
}

#endif // SDB_EMU

// to_f / from_f load and store one element of a kernel's storage type T
// (float or half_t) as float, so one templated body serves both dtypes.
template <class T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<half_t>(half_t v) { return h2f(v); }

template <class T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ half_t from_f<half_t>(float v) { return f2h(v); }

// pack_h2 puts two halves in one 32-bit register, lo in the low 16 bits
// (the element order of an .f16x2 MMA operand).
__device__ __forceinline__ unsigned pack_h2(half_t lo, half_t hi) {
    return (unsigned)lo | ((unsigned)hi << 16);
}

// ld16 / st16 move 16 bytes (16-byte aligned) as one access; ld_h2 loads
// two adjacent halves (4-byte aligned) as one .f16x2 word. The emulator
// spells them with memcpy (no aliasing games under -O2).
#ifndef SDB_EMU
__device__ __forceinline__ uint4 ld16(const void* p) { return *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ void st16(void* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }
__device__ __forceinline__ unsigned ld_h2(const half_t* p) { return *reinterpret_cast<const unsigned*>(p); }
#else
__device__ __forceinline__ uint4 ld16(const void* p) {
    uint4 v;
    __builtin_memcpy(&v, p, 16);
    return v;
}
__device__ __forceinline__ void st16(void* p, uint4 v) { __builtin_memcpy(p, &v, 16); }
__device__ __forceinline__ unsigned ld_h2(const half_t* p) {
    unsigned u;
    __builtin_memcpy(&u, p, 4);
    return u;
}
#endif

// copy8h copies 8 halves, zero8h clears 8 (16-byte aligned).
__device__ __forceinline__ void copy8h(half_t* dst, const half_t* src) { st16(dst, ld16(src)); }
__device__ __forceinline__ void zero8h(half_t* dst) { st16(dst, make_uint4(0, 0, 0, 0)); }

// load16 / store16 move 16 bytes of storage type T as VEC16<T>::N floats
// (4 floats or 8 halves per access).
template <class T> struct VEC16;
template <> struct VEC16<float> { static const int N = 4; };
template <> struct VEC16<half_t> { static const int N = 8; };

template <class T> __device__ __forceinline__ void load16(const T* p, float* out);
template <> __device__ __forceinline__ void load16<float>(const float* p, float* out) {
    uint4 v = ld16(p);
    out[0] = __uint_as_float(v.x);
    out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z);
    out[3] = __uint_as_float(v.w);
}
template <> __device__ __forceinline__ void load16<half_t>(const half_t* p, float* out) {
    uint4 v = ld16(p);
    unsigned w[4] = {v.x, v.y, v.z, v.w};
    for (int i = 0; i < 4; i++) {
        out[2 * i] = h2f((half_t)(w[i] & 0xffffu));
        out[2 * i + 1] = h2f((half_t)(w[i] >> 16));
    }
}
template <class T> __device__ __forceinline__ void store16(T* p, const float* in);
template <> __device__ __forceinline__ void store16<float>(float* p, const float* in) {
    st16(p, make_uint4(__float_as_uint(in[0]), __float_as_uint(in[1]), __float_as_uint(in[2]), __float_as_uint(in[3])));
}
template <> __device__ __forceinline__ void store16<half_t>(half_t* p, const float* in) {
    st16(p, make_uint4(pack_h2(f2h(in[0]), f2h(in[1])), pack_h2(f2h(in[2]), f2h(in[3])), pack_h2(f2h(in[4]), f2h(in[5])),
                       pack_h2(f2h(in[6]), f2h(in[7]))));
}

// aligned16 reports whether p is 16-byte aligned.
__device__ __forceinline__ bool aligned16(const void* p) { return ((unsigned long long)p & 15) == 0; }

// neg_inf is -infinity (the identity of max).
__device__ __forceinline__ float neg_inf() { return __int_as_float((int)0xff800000u); }

// warp_sum / warp_max reduce over the 32 lanes of a full warp; every lane
// gets the result.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(SDB_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(SDB_FULL_MASK, v, o));
    return v;
}

// block_sum / block_max reduce over the whole thread block (blockDim.x a
// multiple of 32, at most 1024, all threads calling); sh is >= 33 floats
// of shared memory, reusable for the next call. Every thread gets the
// result.
__device__ __forceinline__ float block_sum(float v, float* sh) {
    v = warp_sum(v);
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    __syncthreads(); // sh may still be read by a previous call
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        int nw = (blockDim.x + 31) >> 5;
        v = warp_sum(lane < nw ? sh[lane] : 0.0f);
        if (lane == 0) sh[32] = v;
    }
    __syncthreads();
    return sh[32];
}

__device__ __forceinline__ float block_max(float v, float* sh) {
    v = warp_max(v);
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        int nw = (blockDim.x + 31) >> 5;
        v = warp_max(lane < nw ? sh[lane] : neg_inf());
        if (lane == 0) sh[32] = v;
    }
    __syncthreads();
    return sh[32];
}

// mma_m16n8k16 computes D = A B + C for a 16x16 A (row-major, f16), a
// 16x8 B (column-major, f16) and 16x8 C, D (f32), spread over the 32 lanes
// of a warp (all must call it together). Fragment layout, from the PTX ISA
// section "Matrix Fragments for mma.m16n8k16 with floating point type"
// (9.7.13.4.8 in PTX ISA 7.x/8.x, 9.7.14.5.8 in 9.x): with
// g = laneid >> 2 and t = laneid % 4,
//   a[0] = A[g][2t..2t+1]     a[1] = A[g+8][2t..2t+1]
//   a[2] = A[g][2t+8..2t+9]   a[3] = A[g+8][2t+8..2t+9]
//   b[0] = B[2t..2t+1][g]     b[1] = B[2t+8..2t+9][g]
//   c[0], c[1] = C[g][2t], C[g][2t+1]    c[2], c[3] = C[g+8][2t], C[g+8][2t+1]
// (the lower-numbered element of each .f16x2 register in its low 16 bits;
// d as c). d may alias c.
#ifndef SDB_EMU
__device__ __forceinline__ void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}
#else
// The emulation gathers, by shuffles, the two rows of A and two columns of
// B each lane's four outputs need (register pairs packed into one 8-byte
// shuffle: 16 shuffles a call), forms the 16 products exactly (f16 x f16
// fits a float) and sums them with C in double, rounding once: the exact
// result, which the tensor core matches to within its fp32 accumulation
// rounding.
__device__ __forceinline__ void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    int lane = threadIdx.x & 31;
    int g = lane >> 2, t = lane & 3;
    unsigned long long a02 = (unsigned long long)a[2] << 32 | a[0]; // A[g][2t..], A[g][2t+8..]
    unsigned long long a13 = (unsigned long long)a[3] << 32 | a[1]; // A[g+8][2t..], A[g+8][2t+8..]
    unsigned long long b01 = (unsigned long long)b[1] << 32 | b[0]; // B[2t..][g], B[2t+8..][g]
    double acc[4] = {c[0], c[1], c[2], c[3]};
    for (int j = 0; j < 4; j++) { // source lanes 4*row+j hold k = 2j, 2j+1, 2j+8, 2j+9
        unsigned long long r0 = __shfl_sync(SDB_FULL_MASK, a02, 4 * g + j); // A[g][2j..], A[g][2j+8..]
        unsigned long long r1 = __shfl_sync(SDB_FULL_MASK, a13, 4 * g + j); // A[g+8][2j..], A[g+8][2j+8..]
        float a0[4] = {h2f((half_t)(r0 & 0xffffu)), h2f((half_t)(r0 >> 16 & 0xffffu)),
                       h2f((half_t)(r0 >> 32 & 0xffffu)), h2f((half_t)(r0 >> 48))};
        float a1[4] = {h2f((half_t)(r1 & 0xffffu)), h2f((half_t)(r1 >> 16 & 0xffffu)),
                       h2f((half_t)(r1 >> 32 & 0xffffu)), h2f((half_t)(r1 >> 48))};
        for (int cn = 0; cn < 2; cn++) {
            int n = 2 * t + cn;
            unsigned long long bb = __shfl_sync(SDB_FULL_MASK, b01, 4 * n + j); // B[2j..][n], B[2j+8..][n]
            float bk[4] = {h2f((half_t)(bb & 0xffffu)), h2f((half_t)(bb >> 16 & 0xffffu)),
                           h2f((half_t)(bb >> 32 & 0xffffu)), h2f((half_t)(bb >> 48))};
            for (int e = 0; e < 4; e++) {
                acc[cn] += (double)(a0[e] * bk[e]);
                acc[2 + cn] += (double)(a1[e] * bk[e]);
            }
        }
    }
    for (int i = 0; i < 4; i++) d[i] = (float)acc[i];
}
#endif
