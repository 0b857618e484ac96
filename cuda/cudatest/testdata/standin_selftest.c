/* standin_selftest.c: checks of the stand-in driver, cuBLAS and cuBLASLt
 * beyond what package cuda binds today, with NVIDIA's C signatures (so a
 * binding mistake on the Go side cannot hide a stand-in mistake): memfd
 * device memory and cuMemGetAddressRange_v2, events, async copies and
 * memsets, pinned and registered host memory, stream capture into a graph
 * replayed by cuGraphLaunch (and the capture rules), fp16/fp32 GemmEx and
 * GemmStridedBatchedEx, cublasLtMatmul with its epilogues, GEMMs and
 * matmuls recorded into a stream capture and replayed by the graph, and device
 * memory when file descriptors run out. Run by
 * standin_test.go with the libraries' folder as argv[1]; prints one line
 * per failed check and exits 1 if any failed. */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include "../fake/fakegemm.h"

typedef unsigned long long dptr;
static int fails, checks;
#define CHECK(c, ...) do { checks++; if (!(c)) { fails++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)
#define RC(call, want) do { int r_ = (call); CHECK(r_ == (want), "%s = %d, want %d", #call, r_, (want)); } while (0)

static void *lib(const char *dir, const char *name) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    void *h = dlopen(p, RTLD_NOW | RTLD_LOCAL);
    if (!h) { printf("FAIL dlopen %s: %s\n", p, dlerror()); exit(1); }
    return h;
}
#define SYM(h, T, name) __typeof__(T) name = (__typeof__(T))dlsym(h, #name); if (!name) { printf("FAIL missing %s\n", #name); exit(1); }

int main(int argc, char **argv) {
    void *cu = lib(argv[1], "libcuda-fake.so"), *nv = lib(argv[1], "libnvrtc.so.13"), *bl = lib(argv[1], "libcublas.so.13"),
         *lt = lib(argv[1], "libcublasLt.so.13");
    SYM(cu, int (*)(void *), cuCtxSetCurrent);
    SYM(cu, int (*)(dptr *, size_t), cuMemAlloc_v2);
    SYM(cu, int (*)(dptr), cuMemFree_v2);
    SYM(cu, int (*)(dptr *, size_t *, dptr), cuMemGetAddressRange_v2);
    SYM(cu, int (*)(void **, unsigned), cuStreamCreate);
    SYM(cu, int (*)(void *), cuStreamSynchronize);
    SYM(cu, int (*)(void *), cuStreamDestroy_v2);
    SYM(cu, int (*)(void), cuCtxSynchronize);
    SYM(cu, int (*)(void **, unsigned), cuEventCreate);
    SYM(cu, int (*)(void *, void *), cuEventRecord);
    SYM(cu, int (*)(void *), cuEventSynchronize);
    SYM(cu, int (*)(float *, void *, void *), cuEventElapsedTime_v2);
    SYM(cu, int (*)(void *), cuEventDestroy_v2);
    SYM(cu, int (*)(dptr, const void *, size_t, void *), cuMemcpyHtoDAsync_v2);
    SYM(cu, int (*)(void *, dptr, size_t, void *), cuMemcpyDtoHAsync_v2);
    SYM(cu, int (*)(dptr, dptr, size_t, void *), cuMemcpyDtoDAsync_v2);
    SYM(cu, int (*)(dptr, unsigned char, size_t, void *), cuMemsetD8Async);
    SYM(cu, int (*)(dptr, unsigned, size_t, void *), cuMemsetD32Async);
    SYM(cu, int (*)(dptr, const void *, size_t), cuMemcpyHtoD_v2);
    SYM(cu, int (*)(void *, dptr, size_t), cuMemcpyDtoH_v2);
    SYM(cu, int (*)(void **, size_t, unsigned), cuMemHostAlloc);
    SYM(cu, int (*)(void *), cuMemFreeHost);
    SYM(cu, int (*)(void *, size_t, unsigned), cuMemHostRegister_v2);
    SYM(cu, int (*)(void *), cuMemHostUnregister);
    SYM(cu, int (*)(void *, int), cuStreamBeginCapture_v2);
    SYM(cu, int (*)(void *, void **), cuStreamEndCapture);
    SYM(cu, int (*)(void *, int *), cuStreamIsCapturing);
    SYM(cu, int (*)(void **, void *, unsigned long long), cuGraphInstantiateWithFlags);
    SYM(cu, int (*)(void *, void *), cuGraphLaunch);
    SYM(cu, int (*)(void *), cuGraphExecDestroy);
    SYM(cu, int (*)(void *), cuGraphDestroy);
    SYM(cu, int (*)(void **, const void *), cuModuleLoadData);
    SYM(cu, int (*)(void **, void *, const char *), cuModuleGetFunction);
    SYM(cu, int (*)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **, void **), cuLaunchKernel);
    SYM(nv, int (*)(void **, const char *, const char *, int, const char *const *, const char *const *), nvrtcCreateProgram);
    SYM(nv, int (*)(void *, int, const char *const *), nvrtcCompileProgram);
    SYM(nv, int (*)(void *, size_t *), nvrtcGetCUBINSize);
    SYM(nv, int (*)(void *, char *), nvrtcGetCUBIN);

    RC(cuMemAlloc_v2(&(dptr){0}, 16), 201); /* no context yet */
    RC(cuCtxSetCurrent((void *)0x1234), 0);

    /* memory, address ranges */
    dptr a, b;
    RC(cuMemAlloc_v2(&a, 1000), 0);
    RC(cuMemAlloc_v2(&b, 64), 0);
    dptr base = 0;
    size_t size = 0;
    RC(cuMemGetAddressRange_v2(&base, &size, a + 999), 0);
    CHECK(base == a && size == 1000, "range of a+999 = %#llx+%zu, want %#llx+1000", base, size, a);
    RC(cuMemGetAddressRange_v2(&base, &size, a + 4096), 500);
    CHECK(a % 256 == 0 && b % 256 == 0, "allocations not 256-byte aligned");

    /* streams, async copies, memsets, events */
    void *s, *e0, *e1, *e2;
    RC(cuStreamCreate(&s, 0), 0);
    RC(cuEventCreate(&e0, 0), 0);
    RC(cuEventCreate(&e1, 0), 0);
    RC(cuEventCreate(&e2, 2), 0); /* disable timing */
    float ms = -1;
    RC(cuEventElapsedTime_v2(&ms, e0, e1), 600); /* not recorded */
    RC(cuEventRecord(e0, s), 0);
    float host[250], back[250];
    for (int i = 0; i < 250; i++) host[i] = (float)i;
    RC(cuMemcpyHtoDAsync_v2(a, host, sizeof host, s), 0);
    RC(cuMemcpyDtoDAsync_v2(b, a + 4, 64, s), 0);
    RC(cuMemsetD32Async(a, 0x3f800000, 2, s), 0);
    RC(cuMemsetD8Async(a + 8, 0, 4, s), 0);
    RC(cuMemcpyDtoHAsync_v2(back, a, sizeof back, s), 0);
    RC(cuEventRecord(e1, s), 0);
    RC(cuEventRecord(e2, s), 0);
    RC(cuEventSynchronize(e1), 0);
    RC(cuStreamSynchronize(s), 0);
    CHECK(back[0] == 1 && back[1] == 1 && back[2] == 0 && back[3] == 3 && back[249] == 249, "async copies/memsets: %g %g %g %g %g", back[0], back[1], back[2], back[3], back[249]);
    float bb[16];
    RC(cuMemcpyDtoH_v2(bb, b, 64), 0);
    CHECK(bb[0] == 1 && bb[15] == 16, "DtoD async: %g %g", bb[0], bb[15]);
    RC(cuEventElapsedTime_v2(&ms, e0, e1), 0);
    CHECK(ms >= 0 && ms < 1000, "elapsed %g ms", ms);
    RC(cuEventElapsedTime_v2(&ms, e0, e2), 400);

    /* pinned and registered host memory */
    void *pin;
    RC(cuMemHostAlloc(&pin, 1 << 20, 0), 0);
    memset(pin, 7, 1 << 20);
    RC(cuMemHostRegister_v2((char *)pin + 4096, 4096, 0), 712); /* inside an allocation */
    RC(cuMemFreeHost(pin), 0);
    RC(cuMemFreeHost(pin), 1);
    static char page[3 * 4096];
    RC(cuMemHostRegister_v2(page, sizeof page, 0), 0);
    RC(cuMemHostRegister_v2(page + 4096, 4096, 0), 712);
    RC(cuMemHostUnregister(page + 1), 713);
    RC(cuMemHostUnregister(page), 0);

    /* a kernel for the graph */
    const char *src = "extern \"C\" __global__ void inc(float* x, float v, int n) {\n"
                      "    int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
                      "    if (i < n) x[i] += v;\n}\n";
    void *prog;
    RC(nvrtcCreateProgram(&prog, src, "inc.cu", 0, NULL, NULL), 0);
    const char *opts[] = {"--gpu-architecture=sm_90"};
    RC(nvrtcCompileProgram(prog, 1, opts), 0);
    size_t n;
    RC(nvrtcGetCUBINSize(prog, &n), 0);
    char *img = malloc(n);
    RC(nvrtcGetCUBIN(prog, img), 0);
    void *mod, *inc;
    RC(cuModuleLoadData(&mod, img), 0);
    RC(cuModuleGetFunction(&inc, mod, "inc"), 0);

    /* capture: nothing runs until the graph is launched; launch twice */
    int st = -1;
    RC(cuStreamBeginCapture_v2(NULL, 0), 900);
    RC(cuStreamBeginCapture_v2(s, 0), 0);
    RC(cuStreamIsCapturing(s, &st), 0);
    CHECK(st == 1, "capturing status %d", st);
    float v = 2.5f;
    int cnt = 250;
    dptr xa = a;
    void *params[] = {&xa, &v, &cnt, NULL};
    float ones[250];
    for (int i = 0; i < 250; i++) ones[i] = 1;
    RC(cuMemsetD32Async(b, 0, 16, s), 0);
    RC(cuLaunchKernel(inc, 2, 1, 1, 128, 1, 1, 0, s, params, NULL), 0);
    v = 100; /* parameters are copied at capture */
    RC(cuMemcpyDtoDAsync_v2(b, a, 64, s), 0);
    void *g, *ge;
    RC(cuStreamEndCapture(s, &g), 0);
    RC(cuMemcpyDtoH_v2(back, a, sizeof back), 0);
    CHECK(back[3] == 3, "captured work ran at capture: %g", back[3]);
    RC(cuMemcpyHtoD_v2(a, ones, sizeof ones), 0);
    RC(cuGraphInstantiateWithFlags(&ge, g, 0), 0);
    RC(cuGraphLaunch(ge, s), 0);
    RC(cuGraphLaunch(ge, s), 0);
    RC(cuStreamSynchronize(s), 0);
    RC(cuMemcpyDtoH_v2(back, a, sizeof back), 0);
    RC(cuMemcpyDtoH_v2(bb, b, 64), 0);
    CHECK(back[0] == 6 && back[249] == 6 && bb[15] == 6, "graph replays: a[0]=%g a[249]=%g b[15]=%g, want 6", back[0], back[249], bb[15]);
    RC(cuGraphExecDestroy(ge), 0);
    RC(cuGraphDestroy(g), 0);

    /* synchronous work during a capture breaks it */
    RC(cuStreamBeginCapture_v2(s, 0), 0);
    RC(cuMemcpyHtoD_v2(a, ones, 4), 900);
    RC(cuCtxSynchronize(), 900);
    RC(cuStreamSynchronize(s), 900);
    RC(cuStreamIsCapturing(s, &st), 0);
    CHECK(st == 2, "status after a sync in capture %d, want 2 (invalidated)", st);
    RC(cuStreamEndCapture(s, &g), 901);
    RC(cuMemcpyHtoD_v2(a, ones, 4), 0);

    /* GemmEx fp16 / fp32 mixes against the double reference */
    SYM(bl, int (*)(void *, int, int, int, int, int, const void *, const void *, int, int, const void *, int, int, const void *, void *, int, int, int, int), cublasGemmEx);
    SYM(bl, int (*)(void *, int, int, int, int, int, const void *, const void *, int, int, long long, const void *, int, int, long long, const void *, void *, int, int, long long, int, int, int), cublasGemmStridedBatchedEx);
    enum { M = 5, N = 3, K = 7 };
    float af[2][K * M], bf[2][K * N];
    uint16_t ah[2][K * M], bh[2][K * N], ch[2][M * N];
    srand(1);
    for (int p = 0; p < 2; p++) {
        for (int i = 0; i < K * M; i++) { af[p][i] = h2f(f2h((rand() % 200 - 100) / 37.0f)); ah[p][i] = f2h(af[p][i]); }
        for (int i = 0; i < K * N; i++) { bf[p][i] = h2f(f2h((rand() % 200 - 100) / 41.0f)); bh[p][i] = f2h(bf[p][i]); }
    }
    float one = 1, zero = 0;
    SYM(bl, int (*)(void **), cublasCreate_v2);
    SYM(bl, int (*)(void *), cublasDestroy_v2);
    SYM(bl, int (*)(void *, void *), cublasSetStream_v2);
    SYM(bl, int (*)(void *, void *, size_t), cublasSetWorkspace_v2);
    void *blas;
    RC(cublasCreate_v2(&blas), 0);
    RC(cublasGemmEx(NULL, 1, 0, M, N, K, &one, ah[0], 2, K, bh[0], 2, K, &zero, ch[0], 2, M, 68, -1), 1);
    /* C[M,N] = A^T B with A stored [K,M] (lda K, op T) and B [K,N] (ldb K). */
    RC(cublasGemmEx(blas, 1, 0, M, N, K, &one, ah[0], 2, K, bh[0], 2, K, &zero, ch[0], 2, M, 68, -1), 0);
    RC(cublasGemmEx(blas, 1, 0, M, N, K, &one, ah[0], 2, K, bh[0], 2, K, &zero, ch[0], 2, M, 64, -1), 15);
    RC(cublasGemmStridedBatchedEx(blas, 1, 0, M, N, K, &one, ah, 2, K, K * M, bh, 2, K, K * N, &zero, ch, 2, M, M * N, 2, 68, -1), 0);
    float c32[M * N];
    RC(cublasGemmEx(blas, 1, 0, M, N, K, &one, af[1], 0, K, bh[1], 2, K, &zero, c32, 0, M, 68, 99), 0);
    for (int p = 0; p < 2; p++)
        for (int j = 0; j < N; j++)
            for (int i = 0; i < M; i++) {
                double s = 0;
                for (int k = 0; k < K; k++) s += (double)af[p][k + i * K] * bf[p][k + j * K];
                CHECK(ch[p][i + j * M] == f2h((float)s), "fp16 gemm batch %d [%d,%d] = %g, want %g", p, i, j, h2f(ch[p][i + j * M]), s);
                if (p == 1) CHECK(fabs(c32[i + j * M] - s) <= 1e-6 * fabs(s) + 1e-6, "fp32xfp16 gemm [%d,%d] = %g, want %g", i, j, c32[i + j * M], s);
            }

    /* A GemmEx on a capturing stream is recorded with alpha and beta by
     * value and runs at each replay with the operands' contents then. */
    {
        static char wsbuf[1024] __attribute__((aligned(256)));
        RC(cublasSetWorkspace_v2(blas, wsbuf + 8, 256), 7);
        RC(cublasSetStream_v2(blas, s), 0);
        RC(cublasSetWorkspace_v2(blas, wsbuf, sizeof wsbuf), 0);
        float cap[M * N], alpha = 2, beta = 0, bcap[K * N];
        memcpy(bcap, bf[0], sizeof bcap);
        for (int i = 0; i < M * N; i++) cap[i] = 7;
        RC(cuStreamBeginCapture_v2(s, 0), 0);
        RC(cublasGemmEx(blas, 1, 0, M, N, K, &alpha, af[1], 0, K, bcap, 0, K, &beta, cap, 0, M, 68, -1), 0);
        alpha = 100; /* alpha and beta are read at the call */
        beta = 1;
        RC(cuStreamEndCapture(s, &g), 0);
        CHECK(cap[0] == 7 && cap[M * N - 1] == 7, "a captured GEMM ran at capture: %g", cap[0]);
        memcpy(bcap, bf[1], sizeof bcap); /* the replay reads operands as they are then */
        RC(cuGraphInstantiateWithFlags(&ge, g, 0), 0);
        RC(cuGraphDestroy(g), 0); /* the executable graph keeps the recorded call */
        for (int rep = 0; rep < 2; rep++) {
            for (int i = 0; i < M * N; i++) cap[i] = 7;
            RC(cuGraphLaunch(ge, s), 0);
            for (int j = 0; j < N; j++)
                for (int i = 0; i < M; i++) {
                    double want = 0;
                    for (int k = 0; k < K; k++) want += (double)af[1][k + i * K] * bf[1][k + j * K];
                    want *= 2;
                    CHECK(fabs(cap[i + j * M] - want) <= 1e-6 * fabs(want) + 1e-6, "replay %d of a captured GEMM [%d,%d] = %g, want %g",
                          rep, i, j, cap[i + j * M], want);
                }
        }
        RC(cuGraphExecDestroy(ge), 0);
        /* the legacy stream during another stream's capture is refused */
        RC(cuStreamBeginCapture_v2(s, 0), 0);
        RC(cublasSetStream_v2(blas, NULL), 0);
        RC(cublasGemmEx(blas, 1, 0, M, N, K, &one, af[1], 0, K, bcap, 0, K, &zero, cap, 0, M, 68, -1), 13);
        RC(cuStreamEndCapture(s, &g), 0);
        RC(cuGraphDestroy(g), 0);
    }
    RC(cublasDestroy_v2(blas), 0);

    /* cuBLASLt: D = act(A B + bias), bias per row of (column-major) D */
    SYM(lt, int (*)(void **), cublasLtCreate);
    SYM(lt, int (*)(void **, int, int), cublasLtMatmulDescCreate);
    SYM(lt, int (*)(void *, int, const void *, size_t), cublasLtMatmulDescSetAttribute);
    SYM(lt, int (*)(void **, int, uint64_t, uint64_t, int64_t), cublasLtMatrixLayoutCreate);
    SYM(lt, int (*)(void *, void *, const void *, const void *, void *, const void *, void *, const void *, const void *, void *, void *, void *, const void *, void *, size_t, void *), cublasLtMatmul);
    void *h, *d, *la, *lb, *lc;
    RC(cublasLtCreate(&h), 0);
    float bias[M] = {0.5f, -1, 2, -3, 0.25f};
    for (int t = 0; t < 2; t++) {
        int typ = t ? 2 : 0;
        uint16_t biash[M];
        for (int i = 0; i < M; i++) biash[i] = f2h(bias[i]);
        const void *bp = t ? (const void *)biash : (const void *)bias;
        const void *A = t ? (const void *)ah[0] : (const void *)af[0], *B = t ? (const void *)bh[0] : (const void *)bf[0];
        for (int ep = 0; ep < 6; ep++) {
            int eps[] = {1, 2, 4, 6, 32, 36};
            RC(cublasLtMatmulDescCreate(&d, 68, 0), 0);
            int ta = 1;
            RC(cublasLtMatmulDescSetAttribute(d, 3, &ta, 4), 0);
            RC(cublasLtMatmulDescSetAttribute(d, 7, &eps[ep], 4), 0);
            if (eps[ep] & 4) RC(cublasLtMatmulDescSetAttribute(d, 8, &bp, 8), 0);
            RC(cublasLtMatrixLayoutCreate(&la, typ, K, M, K), 0);
            RC(cublasLtMatrixLayoutCreate(&lb, typ, K, N, K), 0);
            RC(cublasLtMatrixLayoutCreate(&lc, typ, M, N, M), 0);
            float out32[M * N];
            uint16_t out16[M * N];
            void *D = t ? (void *)out16 : (void *)out32;
            RC(cublasLtMatmul(h, d, &one, A, la, B, lb, &zero, D, lc, D, lc, NULL, NULL, 0, NULL), 0);
            for (int j = 0; j < N; j++)
                for (int i = 0; i < M; i++) {
                    double s = 0;
                    for (int k = 0; k < K; k++) s += (double)af[0][k + i * K] * bf[0][k + j * K];
                    if (eps[ep] & 4) s += bias[i];
                    if (eps[ep] == 2 || eps[ep] == 6) s = s > 0 ? s : 0;
                    if (eps[ep] >= 32) s = 0.5 * s * (1 + tanh(0.7978845608028654 * (s + 0.044715 * s * s * s)));
                    double got = t ? h2f(out16[i + j * M]) : out32[i + j * M];
                    double tol = t ? 1e-3 * fabs(s) + 1e-3 : 1e-6 * fabs(s) + 1e-6;
                    CHECK(fabs(got - s) <= tol, "lt type %d epilogue %d [%d,%d] = %g, want %g", typ, eps[ep], i, j, got, s);
                }
        }
    }
    /* A matmul on a capturing stream is recorded with the descriptor's
     * values at the call: changing the epilogue afterwards does not change
     * the replay. */
    {
        RC(cublasLtMatmulDescCreate(&d, 68, 0), 0);
        int ta = 1, relu = 6, plain = 1;
        const void *bp = bias;
        RC(cublasLtMatmulDescSetAttribute(d, 3, &ta, 4), 0);
        RC(cublasLtMatmulDescSetAttribute(d, 7, &relu, 4), 0);
        RC(cublasLtMatmulDescSetAttribute(d, 8, &bp, 8), 0);
        RC(cublasLtMatrixLayoutCreate(&la, 0, K, M, K), 0);
        RC(cublasLtMatrixLayoutCreate(&lb, 0, K, N, K), 0);
        RC(cublasLtMatrixLayoutCreate(&lc, 0, M, N, M), 0);
        float out[M * N];
        for (int i = 0; i < M * N; i++) out[i] = -7;
        RC(cuStreamBeginCapture_v2(s, 0), 0);
        RC(cublasLtMatmul(h, d, &one, af[0], la, bf[0], lb, &zero, out, lc, out, lc, NULL, NULL, 0, s), 0);
        RC(cublasLtMatmulDescSetAttribute(d, 7, &plain, 4), 0);
        RC(cuStreamEndCapture(s, &g), 0);
        CHECK(out[0] == -7, "a captured matmul ran at capture: %g", out[0]);
        RC(cuGraphInstantiateWithFlags(&ge, g, 0), 0);
        RC(cuGraphLaunch(ge, s), 0);
        for (int j = 0; j < N; j++)
            for (int i = 0; i < M; i++) {
                double want = bias[i];
                for (int k = 0; k < K; k++) want += (double)af[0][k + i * K] * bf[0][k + j * K];
                want = want > 0 ? want : 0;
                CHECK(fabs(out[i + j * M] - want) <= 1e-6 * fabs(want) + 1e-6, "replayed matmul [%d,%d] = %g, want %g", i, j,
                      out[i + j * M], want);
            }
        RC(cuGraphExecDestroy(ge), 0);
        RC(cuGraphDestroy(g), 0);
    }

    /* out of file descriptors: allocations still work, only IPC export refuses them */
    SYM(cu, int (*)(void *, dptr), cuIpcGetMemHandle);
    struct rlimit lim, saved;
    getrlimit(RLIMIT_NOFILE, &saved);
    lim = saved;
    lim.rlim_cur = 48;
    RC(setrlimit(RLIMIT_NOFILE, &lim), 0);
    dptr many[64];
    int exportable = 0, refused = 0;
    char handle[64];
    for (int i = 0; i < 64; i++) {
        RC(cuMemAlloc_v2(&many[i], 100), 0);
        int r = cuIpcGetMemHandle(handle, many[i]);
        exportable += r == 0;
        refused += r == 1;
    }
    CHECK(exportable > 0 && refused > 0 && exportable + refused == 64, "with 48 fds: %d exportable, %d refused", exportable, refused);
    for (int i = 0; i < 64; i++) RC(cuMemFree_v2(many[i]), 0);
    setrlimit(RLIMIT_NOFILE, &saved);

    RC(cuMemFree_v2(a), 0);
    RC(cuMemFree_v2(a), 1);
    RC(cuMemFree_v2(b), 0);
    RC(cuStreamDestroy_v2(s), 0);
    printf("%d checks, %d failed\n%s\n", checks, fails, fails ? "FAILED" : "ok");
    return fails ? 1 : 0;
}
