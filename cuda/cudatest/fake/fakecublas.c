/* fakecublas.c: a stand-in libcublas for tests without a GPU: column-major
 * reference SGEMM, GemmEx and GemmStridedBatchedEx (A, B, C each fp32 or
 * fp16, compute CUBLAS_COMPUTE_32F or its fast variants, summed in double
 * and rounded once; fakegemm.h) and strided-batched SGEMM on host memory,
 * with cuBLAS's argument order, so the purego bindings (up to 23
 * arguments, scalars by pointer) and the row-major bookkeeping can be
 * checked end to end. Runs synchronously, whatever the stream. Not a BLAS. */
#include "fakegemm.h"

enum { OK = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7, NOT_SUPPORTED = 15 };

int cublasCreate_v2(void **h) { *h = (void *)0x9; return 0; }
int cublasDestroy_v2(void *h) { return 0; }
int cublasSetStream_v2(void *h, void *s) { return h ? 0 : NOT_INITIALIZED; }
int cublasGetVersion_v2(void *h, int *v) { *v = 130000; return 0; }
int cublasSetMathMode(void *h, int mode) { return mode == 0 || mode == 3 ? 0 : INVALID_VALUE; }

static int dims(int ta, int tb, int m, int n, int k, int lda, int ldb, int ldc) {
    if ((unsigned)ta > 2 || (unsigned)tb > 2 || m < 0 || n < 0 || k < 0) return INVALID_VALUE;
    if (lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m || lda < 1 || ldb < 1 || ldc < 1) return INVALID_VALUE;
    return OK;
}

int cublasSgemm_v2(void *h, int ta, int tb, int m, int n, int k, const float *alpha, const float *A, int lda,
                   const float *B, int ldb, const float *beta, float *C, int ldc) {
    if (dims(ta, tb, m, n, k, lda, ldb, ldc)) return INVALID_VALUE;
    gemmT(ta, tb, m, n, k, *alpha, A, R32F, lda, B, R32F, ldb, *beta, C, R32F, ldc, NULL);
    return 0;
}

/* exArgs checks a GemmEx type combination: each of A, B, C fp32 or fp16,
 * fp32 compute (CUBLAS_COMPUTE_32F 68, _PEDANTIC 69, _FAST_16F 74,
 * _FAST_16BF 75, _FAST_TF32 77; alpha and beta are floats) and the default
 * algorithms (-1, 99). */
static int exArgs(int at_, int bt, int ct, int compute, int algo) {
    if ((at_ != R32F && at_ != R16F) || (bt != R32F && bt != R16F) || (ct != R32F && ct != R16F)) return NOT_SUPPORTED;
    if (compute != 68 && compute != 69 && compute != 74 && compute != 75 && compute != 77) return NOT_SUPPORTED;
    if (algo != -1 && algo != 99) return NOT_SUPPORTED;
    return OK;
}

int cublasGemmEx(void *h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at_, int lda,
                 const void *B, int bt, int ldb, const void *beta, void *C, int ct, int ldc, int compute, int algo) {
    int rc = exArgs(at_, bt, ct, compute, algo);
    if (rc) return rc;
    if (dims(ta, tb, m, n, k, lda, ldb, ldc)) return INVALID_VALUE;
    gemmT(ta, tb, m, n, k, *(const float *)alpha, A, at_, lda, B, bt, ldb, *(const float *)beta, C, ct, ldc, NULL);
    return 0;
}

int cublasGemmStridedBatchedEx(void *h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at_,
                               int lda, long long sa, const void *B, int bt, int ldb, long long sb, const void *beta,
                               void *C, int ct, int ldc, long long sc, int count, int compute, int algo) {
    int rc = exArgs(at_, bt, ct, compute, algo);
    if (rc) return rc;
    if (dims(ta, tb, m, n, k, lda, ldb, ldc) || count < 0) return INVALID_VALUE;
    int ea = at_ == R16F ? 2 : 4, eb = bt == R16F ? 2 : 4, ec = ct == R16F ? 2 : 4;
    for (int i = 0; i < count; i++)
        gemmT(ta, tb, m, n, k, *(const float *)alpha, (const char *)A + i * sa * ea, at_, lda,
              (const char *)B + i * sb * eb, bt, ldb, *(const float *)beta, (char *)C + i * sc * ec, ct, ldc, NULL);
    return 0;
}

int cublasSgemmStridedBatched(void *h, int ta, int tb, int m, int n, int k, const float *alpha, const float *A, int lda,
                              long long sa, const float *B, int ldb, long long sb, const float *beta, float *C, int ldc,
                              long long sc, int count) {
    if (dims(ta, tb, m, n, k, lda, ldb, ldc) || count < 0) return INVALID_VALUE;
    for (int i = 0; i < count; i++)
        gemmT(ta, tb, m, n, k, *alpha, A + i * sa, R32F, lda, B + i * sb, R32F, ldb, *beta, C + i * sc, R32F, ldc, NULL);
    return 0;
}
