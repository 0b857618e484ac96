/* fakecublas.c: a stand-in libcublas for tests without a GPU: column-major
 * reference SGEMM, GemmEx (fp32 types only) and strided-batched SGEMM on
 * host memory, with cuBLAS's argument order, so the purego bindings (up to
 * 19 arguments, floats by pointer) and the row-major bookkeeping can be
 * checked end to end. Not a BLAS. */
#include <stddef.h>

static float at(const float *x, int ld, int op, int i, int j) { return op ? x[j + (size_t)i * ld] : x[i + (size_t)j * ld]; }

static void gemm(int ta, int tb, int m, int n, int k, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc) {
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int p = 0; p < k; p++) s += (double)at(A, lda, ta, i, p) * at(B, ldb, tb, p, j);
            float c = beta == 0 ? 0 : beta * C[i + (size_t)j * ldc]; /* BLAS: beta 0 never reads C */
            C[i + (size_t)j * ldc] = alpha * (float)s + c;
        }
}

int cublasCreate_v2(void **h) { *h = (void *)0x9; return 0; }
int cublasDestroy_v2(void *h) { return 0; }
int cublasSetStream_v2(void *h, void *s) { return s == (void *)0x5 ? 0 : 7; }
int cublasGetVersion_v2(void *h, int *v) { *v = 130000; return 0; }
int cublasSgemm_v2(void *h, int ta, int tb, int m, int n, int k, const float *alpha, const float *A, int lda,
                   const float *B, int ldb, const float *beta, float *C, int ldc) {
    gemm(ta, tb, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
    return 0;
}
int cublasGemmEx(void *h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at_, int lda,
                 const void *B, int bt, int ldb, const void *beta, void *C, int ct, int ldc, int compute, int algo) {
    if (at_ != 0 || bt != 0 || ct != 0 || compute != 68 || algo != -1) return 15; /* NOT_SUPPORTED */
    gemm(ta, tb, m, n, k, *(const float *)alpha, A, lda, B, ldb, *(const float *)beta, C, ldc);
    return 0;
}
int cublasSgemmStridedBatched(void *h, int ta, int tb, int m, int n, int k, const float *alpha, const float *A, int lda,
                              long long sa, const float *B, int ldb, long long sb, const float *beta, float *C, int ldc,
                              long long sc, int count) {
    for (int i = 0; i < count; i++)
        gemm(ta, tb, m, n, k, *alpha, A + i * sa, lda, B + i * sb, ldb, *beta, C + i * sc, ldc);
    return 0;
}
int cublasSetMathMode(void *h, int mode) { return mode == 0 || mode == 3 ? 0 : 7; }
