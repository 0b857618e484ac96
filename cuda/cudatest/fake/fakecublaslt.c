/* fakecublaslt.c: a stand-in libcublasLt for tests without a GPU, with
 * cublasLt.h's signatures: handles, matmul descriptors (compute type and
 * scale type fp32; attributes TRANSA, TRANSB, EPILOGUE, BIAS_POINTER and
 * BIAS_DATA_TYPE; others accepted and ignored), matrix layouts (fp32 or
 * fp16, column-major, batch count 1), preferences, a heuristic query that
 * offers one algorithm needing no workspace, and cublasLtMatmul:
 *   D = epilogue(alpha op(A) op(B) + beta C)
 * with epilogues DEFAULT, RELU, BIAS, RELU_BIAS, GELU (tanh form, as
 * cuBLASLt documents) and GELU_BIAS (bias first), the bias one value per
 * row of D in D's type, summed in double and rounded once (fakegemm.h).
 * The algorithm may be NULL and the workspace is ignored; D may alias C
 * only with identical layouts. A matmul on a stream that is being
 * captured is recorded into the capture (fakecapture.h) with the
 * descriptor's and layouts' values and alpha/beta as they are at the call
 * (host pointer mode), and runs when the graph is launched; otherwise it
 * runs at once. Not cuBLASLt. */
#include "fakecapture.h"
#include "fakegemm.h"

enum { OK = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7, EXECUTION_FAILED = 13, NOT_SUPPORTED = 15 };

struct desc { int compute, scale, ta, tb, epilogue, biasType; const void *bias; };
struct layout { int type; uint64_t rows, cols; int64_t ld; };

int cublasLtCreate(void **h) { *h = malloc(1); return 0; }
int cublasLtDestroy(void *h) { free(h); return 0; }
size_t cublasLtGetVersion(void) { return 130000; }

int cublasLtMatmulDescCreate(struct desc **d, int compute, int scale) {
    if (compute != 68 && compute != 69 && compute != 74 && compute != 75 && compute != 77) return NOT_SUPPORTED;
    if (scale != R32F) return NOT_SUPPORTED;
    *d = calloc(1, sizeof **d);
    (*d)->compute = compute;
    (*d)->scale = scale;
    (*d)->epilogue = 1;
    (*d)->biasType = -1;
    return 0;
}
int cublasLtMatmulDescDestroy(struct desc *d) { free(d); return 0; }
int cublasLtMatmulDescSetAttribute(struct desc *d, int attr, const void *buf, size_t n) {
    if (!d || !buf) return INVALID_VALUE;
    int32_t v = 0;
    if (n == 4) memcpy(&v, buf, 4);
    switch (attr) {
    case 3: /* TRANSA */
    case 4: /* TRANSB */
        if (n != 4 || v < 0 || v > 1) return INVALID_VALUE;
        if (attr == 3) d->ta = v; else d->tb = v;
        return 0;
    case 7: /* EPILOGUE */
        if (n != 4) return INVALID_VALUE;
        if (v != 1 && v != 2 && v != 4 && v != 6 && v != 32 && v != 36) return NOT_SUPPORTED;
        d->epilogue = v;
        return 0;
    case 8: /* BIAS_POINTER */
        if (n != 8) return INVALID_VALUE;
        memcpy(&d->bias, buf, 8);
        return 0;
    case 26: /* BIAS_DATA_TYPE */
        if (n != 4 || (v != R32F && v != R16F)) return INVALID_VALUE;
        d->biasType = v;
        return 0;
    }
    return 0;
}

int cublasLtMatrixLayoutCreate(struct layout **l, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    if (type != R32F && type != R16F) return NOT_SUPPORTED;
    if (ld < (int64_t)rows || ld < 1) return INVALID_VALUE;
    *l = calloc(1, sizeof **l);
    **l = (struct layout){type, rows, cols, ld};
    return 0;
}
int cublasLtMatrixLayoutDestroy(struct layout *l) { free(l); return 0; }

int cublasLtMatmulPreferenceCreate(void **p) { *p = malloc(8); return 0; }
int cublasLtMatmulPreferenceDestroy(void *p) { free(p); return 0; }
int cublasLtMatmulPreferenceSetAttribute(void *p, int attr, const void *buf, size_t n) { return p && buf ? 0 : INVALID_VALUE; }

/* cublasLtMatmulHeuristicResult_t: algo (64 bytes), workspaceSize, state, wavesCount, reserved[4]. */
struct heuristic { uint64_t algo[8]; size_t workspace; int state; float waves; int reserved[4]; };
int cublasLtMatmulAlgoGetHeuristic(void *h, struct desc *d, struct layout *a, struct layout *b, struct layout *c,
                                   struct layout *dl, void *pref, int req, struct heuristic *out, int *n) {
    if (!h || !d || !a || !b || !c || !dl || req < 1) return INVALID_VALUE;
    memset(out, 0, sizeof *out);
    out->algo[0] = 0x5db;
    out->waves = 1;
    *n = 1;
    return 0;
}

/* matmulCall is one cublasLtMatmul with its arguments by value. */
struct matmulCall {
    struct desc d;
    struct layout la, lb, lc, ld;
    float alpha, beta;
    const void *A, *B, *C;
    void *D;
};

static int runMatmul(void *p) {
    const struct matmulCall *c = p;
    const struct desc *d = &c->d;
    uint64_t m = d->ta ? c->la.cols : c->la.rows, k = d->ta ? c->la.rows : c->la.cols, n = d->tb ? c->lb.rows : c->lb.cols;
    int ep = d->epilogue;
    int hasBias = ep == 4 || ep == 6 || ep == 36;
    int bt = d->biasType >= 0 ? d->biasType : c->ld.type;
    size_t mn = (size_t)m * n;
    double *acc = malloc((mn ? mn : 1) * sizeof *acc);
    if (!acc) return 3; /* ALLOC_FAILED */
    /* C read through its own layout, then written to D's. */
    gemmT(d->ta, d->tb, (int)m, (int)n, (int)k, c->alpha, c->A, c->la.type, (int)c->la.ld, c->B, c->lb.type,
          (int)c->lb.ld, c->beta, (void *)c->C, c->lc.type, (int)c->lc.ld, acc);
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t i = 0; i < m; i++) {
            double v = acc[i + j * m];
            if (hasBias) v += ld(d->bias, bt, i);
            if (ep == 2 || ep == 6) v = v > 0 ? v : 0;
            if (ep == 32 || ep == 36) v = 0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
            st(c->D, c->ld.type, i + j * c->ld.ld, v);
        }
    free(acc);
    return 0;
}

int cublasLtMatmul(void *h, struct desc *d, const float *alpha, const void *A, struct layout *la, const void *B,
                   struct layout *lb, const float *beta, const void *C, struct layout *lc, void *D, struct layout *ldd,
                   const void *algo, void *ws, size_t wsSize, void *stream) {
    if (!h) return NOT_INITIALIZED;
    if (!d || !la || !lb || !lc || !ldd || !alpha || !beta) return INVALID_VALUE;
    uint64_t m = d->ta ? la->cols : la->rows, k = d->ta ? la->rows : la->cols;
    uint64_t kb = d->tb ? lb->cols : lb->rows, n = d->tb ? lb->rows : lb->cols;
    if (k != kb || lc->rows != m || lc->cols != n || ldd->rows != m || ldd->cols != n) return INVALID_VALUE;
    if (C == D && (lc->type != ldd->type || lc->ld != ldd->ld)) return INVALID_VALUE;
    int ep = d->epilogue;
    if ((ep == 4 || ep == 6 || ep == 36) && !d->bias) return INVALID_VALUE;
    struct matmulCall *c = malloc(sizeof *c);
    if (!c) return 3; /* ALLOC_FAILED */
    *c = (struct matmulCall){*d, *la, *lb, *lc, *ldd, *alpha, *beta, A, B, C, D};
    return enqueue(stream, runMatmul, free, c, "cublasLtMatmul", EXECUTION_FAILED);
}
