/* fakegemm.h: the reference GEMM shared by the stand-in cuBLAS and cuBLASLt:
 * column-major C = alpha op(A) op(B) + beta C with A, B, C each fp32
 * (CUDA_R_32F, 0) or fp16 (CUDA_R_16F, 2), products summed in double and
 * rounded once to the output type (fp16 round to nearest even), plus the
 * fp16 <-> fp32 conversions. Not a BLAS: one loop nest, no blocking. */
#include <math.h>
#include <stdlib.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum { R32F = 0, R16F = 2 };

static float h2f(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, u;
    if (e == 0x1f) u = s | 0x7f800000 | (m << 13); /* inf, nan */
    else if (e) u = s | ((e + 112) << 23) | (m << 13);
    else if (!m) u = s;
    else { /* subnormal: normalise */
        e = 113;
        while (!(m & 0x400)) { m <<= 1; e--; }
        u = s | (e << 23) | ((m & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t f2h(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t s = (u >> 16) & 0x8000;
    uint32_t a = u & 0x7fffffff;
    if (a > 0x7f800000) return s | 0x7e00 | ((a >> 13) & 0x3ff); /* nan stays nan */
    if (a >= 0x477ff000) return s | 0x7c00;                    /* rounds to >= 65520: inf */
    if (a < 0x38800000) {                                      /* subnormal or zero in fp16 */
        if (a < 0x33000000) return s;                          /* below half the smallest subnormal */
        uint32_t m = (a & 0x7fffff) | 0x800000, sh = 126 - (a >> 23); /* value = m * 2^-(sh+24+?) */
        uint32_t q = m >> sh, r = m & ((1u << sh) - 1), half = 1u << (sh - 1);
        if (r > half || (r == half && (q & 1))) q++;
        return s | (uint16_t)q;
    }
    uint32_t q = a - 0x38000000; /* rebias 127 -> 15 */
    uint32_t r = q & 0x1fff;
    q >>= 13;
    if (r > 0x1000 || (r == 0x1000 && (q & 1))) q++;
    return s | (uint16_t)q;
}

static double ld(const void *x, int t, size_t i) { return t == R16F ? h2f(((const uint16_t *)x)[i]) : ((const float *)x)[i]; }
static void st(void *x, int t, size_t i, double v) {
    if (t == R16F) ((uint16_t *)x)[i] = f2h((float)v);
    else ((float *)x)[i] = (float)v;
}
static size_t at(int ld_, int op, int i, int j) { return op ? (size_t)j + (size_t)i * ld_ : (size_t)i + (size_t)j * ld_; }

/* gemmT: C[m,n] = alpha op(A)[m,k] op(B)[k,n] + beta C (beta 0 never reads C).
 * out receives the sums before rounding when not NULL (for epilogues).
 * op(A) rows and op(B) columns are first widened to contiguous doubles, so
 * the inner loop is a unit-stride dot product (four partial sums). */
static void gemmT(int ta, int tb, int m, int n, int k, float alpha, const void *A, int at_, int lda, const void *B, int bt,
                  int ldb, float beta, void *C, int ct, int ldc, double *out) {
    size_t kk = k > 0 ? (size_t)k : 1;
    double *ad = (double *)malloc(sizeof(double) * kk * (m > 0 ? m : 1));
    double *bd = (double *)malloc(sizeof(double) * kk * (n > 0 ? n : 1));
    for (int i = 0; i < m; i++)
        for (int p = 0; p < k; p++) ad[(size_t)i * kk + p] = ld(A, at_, at(lda, ta, i, p));
    for (int j = 0; j < n; j++)
        for (int p = 0; p < k; p++) bd[(size_t)j * kk + p] = ld(B, bt, at(ldb, tb, p, j));
    for (int j = 0; j < n; j++) {
        const double *b = bd + (size_t)j * kk;
        for (int i = 0; i < m; i++) {
            const double *a = ad + (size_t)i * kk;
            double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            int p = 0;
            for (; p + 4 <= k; p += 4) {
                s0 += a[p] * b[p];
                s1 += a[p + 1] * b[p + 1];
                s2 += a[p + 2] * b[p + 2];
                s3 += a[p + 3] * b[p + 3];
            }
            for (; p < k; p++) s0 += a[p] * b[p];
            double s = (s0 + s1) + (s2 + s3);
            double v = (double)alpha * s + (beta == 0 ? 0 : (double)beta * ld(C, ct, (size_t)i + (size_t)j * ldc));
            if (out) out[(size_t)i + (size_t)j * m] = v;
            else st(C, ct, (size_t)i + (size_t)j * ldc, v);
        }
    }
    free(ad);
    free(bd);
}
