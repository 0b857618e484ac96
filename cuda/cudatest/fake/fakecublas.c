/* fakecublas.c: a stand-in libcublas for tests without a GPU: column-major
 * reference SGEMM, GemmEx and GemmStridedBatchedEx (A, B, C each fp32 or
 * fp16, compute CUBLAS_COMPUTE_32F or its fast variants, summed in double
 * and rounded once; fakegemm.h) and strided-batched SGEMM on host memory,
 * with cuBLAS's argument order, so the purego bindings (up to 23
 * arguments, scalars by pointer) and the row-major bookkeeping can be
 * checked end to end. A handle holds its stream (cublasSetStream_v2) and
 * workspace (cublasSetWorkspace_v2, accepted and unused). A GEMM on a
 * stream that is being captured is recorded into the capture
 * (fakecapture.h) with its arguments, alpha and beta by value (host
 * pointer mode, the only one), and runs when the graph is launched;
 * otherwise it runs at once. Not a BLAS. */
#include "fakecapture.h"
#include "fakegemm.h"

enum { OK = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7, EXECUTION_FAILED = 13, NOT_SUPPORTED = 15 };

struct handle { void *stream, *ws; size_t wsSize; };

int cublasCreate_v2(struct handle **h) {
    if (!h) return INVALID_VALUE;
    *h = calloc(1, sizeof **h);
    return *h ? OK : 3; /* ALLOC_FAILED */
}
int cublasDestroy_v2(struct handle *h) {
    if (!h) return NOT_INITIALIZED;
    free(h);
    return 0;
}
/* cublasSetStream_v2 also drops a workspace set before, as cuBLAS does. */
int cublasSetStream_v2(struct handle *h, void *s) {
    if (!h) return NOT_INITIALIZED;
    h->stream = s;
    h->ws = NULL;
    h->wsSize = 0;
    return 0;
}
int cublasGetStream_v2(struct handle *h, void **s) {
    if (!h) return NOT_INITIALIZED;
    *s = h->stream;
    return 0;
}
/* cublasSetWorkspace_v2: a NULL workspace must have size 0, and a
 * workspace must be 256-byte aligned (cuBLAS's rules); it is kept, never
 * used. */
int cublasSetWorkspace_v2(struct handle *h, void *ws, size_t n) {
    if (!h) return NOT_INITIALIZED;
    if ((!ws && n) || ((uintptr_t)ws & 255)) return INVALID_VALUE;
    h->ws = ws;
    h->wsSize = n;
    return 0;
}
int cublasGetVersion_v2(struct handle *h, int *v) { *v = 130000; return 0; }
int cublasSetMathMode(struct handle *h, int mode) { return mode == 0 || mode == 3 ? 0 : INVALID_VALUE; }

static int dims(int ta, int tb, int m, int n, int k, int lda, int ldb, int ldc) {
    if ((unsigned)ta > 2 || (unsigned)tb > 2 || m < 0 || n < 0 || k < 0) return INVALID_VALUE;
    if (lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m || lda < 1 || ldb < 1 || ldc < 1) return INVALID_VALUE;
    return OK;
}

/* gemmCall is one (strided batched) GEMM with its arguments by value:
 * strides in elements, count 1 for a plain GEMM. */
struct gemmCall {
    int ta, tb, m, n, k;
    float alpha, beta;
    const void *A, *B;
    void *C;
    int at, bt, ct, lda, ldb, ldc, count;
    long long sa, sb, sc;
};

static int runGemm(void *p) {
    const struct gemmCall *g = p;
    int ea = g->at == R16F ? 2 : 4, eb = g->bt == R16F ? 2 : 4, ec = g->ct == R16F ? 2 : 4;
    for (int i = 0; i < g->count; i++)
        gemmT(g->ta, g->tb, g->m, g->n, g->k, g->alpha, (const char *)g->A + i * g->sa * ea, g->at, g->lda,
              (const char *)g->B + i * g->sb * eb, g->bt, g->ldb, g->beta, (char *)g->C + i * g->sc * ec, g->ct, g->ldc,
              NULL);
    return 0;
}

/* queue runs the GEMM on the handle's stream, or records it into that
 * stream's capture. */
static int queue(struct handle *h, struct gemmCall g, const char *what) {
    struct gemmCall *p = malloc(sizeof *p);
    if (!p) return 3; /* ALLOC_FAILED */
    *p = g;
    return enqueue(h->stream, runGemm, free, p, what, EXECUTION_FAILED);
}

int cublasSgemm_v2(struct handle *h, int ta, int tb, int m, int n, int k, const float *alpha, const float *A, int lda,
                   const float *B, int ldb, const float *beta, float *C, int ldc) {
    if (!h) return NOT_INITIALIZED;
    if (dims(ta, tb, m, n, k, lda, ldb, ldc)) return INVALID_VALUE;
    return queue(h, (struct gemmCall){ta, tb, m, n, k, *alpha, *beta, A, B, C, R32F, R32F, R32F, lda, ldb, ldc, 1},
                 "cublasSgemm");
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

int cublasGemmEx(struct handle *h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at_,
                 int lda, const void *B, int bt, int ldb, const void *beta, void *C, int ct, int ldc, int compute,
                 int algo) {
    if (!h) return NOT_INITIALIZED;
    int rc = exArgs(at_, bt, ct, compute, algo);
    if (rc) return rc;
    if (dims(ta, tb, m, n, k, lda, ldb, ldc)) return INVALID_VALUE;
    return queue(h,
                 (struct gemmCall){ta, tb, m, n, k, *(const float *)alpha, *(const float *)beta, A, B, C, at_, bt, ct,
                                   lda, ldb, ldc, 1},
                 "cublasGemmEx");
}

int cublasGemmStridedBatchedEx(struct handle *h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A,
                               int at_, int lda, long long sa, const void *B, int bt, int ldb, long long sb,
                               const void *beta, void *C, int ct, int ldc, long long sc, int count, int compute,
                               int algo) {
    if (!h) return NOT_INITIALIZED;
    int rc = exArgs(at_, bt, ct, compute, algo);
    if (rc) return rc;
    if (dims(ta, tb, m, n, k, lda, ldb, ldc) || count < 0) return INVALID_VALUE;
    return queue(h,
                 (struct gemmCall){ta, tb, m, n, k, *(const float *)alpha, *(const float *)beta, A, B, C, at_, bt, ct,
                                   lda, ldb, ldc, count, sa, sb, sc},
                 "cublasGemmStridedBatchedEx");
}

int cublasSgemmStridedBatched(struct handle *h, int ta, int tb, int m, int n, int k, const float *alpha,
                              const float *A, int lda, long long sa, const float *B, int ldb, long long sb,
                              const float *beta, float *C, int ldc, long long sc, int count) {
    if (!h) return NOT_INITIALIZED;
    if (dims(ta, tb, m, n, k, lda, ldb, ldc) || count < 0) return INVALID_VALUE;
    return queue(h,
                 (struct gemmCall){ta, tb, m, n, k, *alpha, *beta, A, B, C, R32F, R32F, R32F, lda, ldb, ldc, count, sa,
                                   sb, sc},
                 "cublasSgemmStridedBatched");
}
