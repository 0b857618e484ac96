/* fakecuda.c: a stand-in libcuda for tests on machines without a GPU. It
 * implements the driver entry points the cuda package binds on host
 * memory ("device pointers" are malloc'd addresses), requires the context
 * to be current on the calling thread (so a call off the device's locked
 * thread fails like the real driver would), runs toy kernels by name
 * (and the host twins of cuda/kernels in fakekernels.h) so launch-argument
 * packing and nn's GPU ops can be checked, and round-trips a 64-byte IPC
 * handle passed by value. It is not a CUDA emulator. */
#include <stdlib.h>
#include <string.h>
#include <stddef.h>

typedef unsigned long long CUdeviceptr;
typedef struct { char reserved[64]; } CUipcMemHandle;
static __thread void *cur;
#define NEEDCTX if (!cur) return 201 /* CUDA_ERROR_INVALID_CONTEXT */

int cuInit(unsigned f) { return f == 0 ? 0 : 1; }
int cuDriverGetVersion(int *v) { *v = 13000; return 0; }
int cuDeviceGetCount(int *n) { *n = 1; return 0; }
int cuDeviceGet(int *d, int o) { if (o != 0) return 101; *d = 0; return 0; }
int cuDeviceGetName(char *name, int len, int d) { strncpy(name, "Fake GPU", len); return 0; }
int cuDeviceGetAttribute(int *v, int a, int d) {
    switch (a) {
    case 75: *v = 9; break;
    case 76: *v = 0; break;
    case 16: *v = 132; break;
    case 102: case 103: *v = 1; break;
    default: *v = 0;
    }
    return 0;
}
int cuDeviceTotalMem_v2(size_t *b, int d) { *b = 80ull << 30; return 0; }
int cuDevicePrimaryCtxRetain(void **c, int d) { *c = (void *)0x1234; return 0; }
int cuDevicePrimaryCtxRelease_v2(int d) { return 0; }
int cuCtxSetCurrent(void *c) { cur = c; return 0; }
int cuCtxSynchronize(void) { NEEDCTX; return 0; }
int cuMemAlloc_v2(CUdeviceptr *p, size_t n) { NEEDCTX; *p = (CUdeviceptr)malloc(n); return *p ? 0 : 2; }
int cuMemFree_v2(CUdeviceptr p) { NEEDCTX; free((void *)p); return 0; }
int cuMemGetInfo_v2(size_t *f, size_t *t) { NEEDCTX; *f = 1ull << 30; *t = 80ull << 30; return 0; }
int cuMemcpyHtoD_v2(CUdeviceptr d, const void *s, size_t n) { NEEDCTX; memcpy((void *)d, s, n); return 0; }
int cuMemcpyDtoH_v2(void *d, CUdeviceptr s, size_t n) { NEEDCTX; memcpy(d, (void *)s, n); return 0; }
int cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { NEEDCTX; memcpy((void *)d, (void *)s, n); return 0; }
int cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { NEEDCTX; memset((void *)d, v, n); return 0; }
int cuMemsetD32_v2(CUdeviceptr d, unsigned v, size_t n) {
    NEEDCTX;
    for (size_t i = 0; i < n; i++) ((unsigned *)d)[i] = v;
    return 0;
}
int cuStreamCreate(void **s, unsigned f) { NEEDCTX; *s = (void *)0x5; return 0; }
int cuStreamSynchronize(void *s) { NEEDCTX; return s == (void *)0x5 ? 0 : 400; }
int cuStreamDestroy_v2(void *s) { return 0; }
int cuModuleLoadData(void **m, const void *img) { NEEDCTX; *m = (void *)0x77; return 0; }
int cuModuleUnload(void *m) { return 0; }
struct fn { char name[64]; };
#define P(i, T) (*(T *)params[i])
#include "fakekernels.h"
int cuModuleGetFunction(void **f, void *m, const char *name) {
    NEEDCTX;
    struct fn *x = calloc(1, sizeof *x);
    strncpy(x->name, name, 63);
    *f = x;
    return 0;
}
int cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned sh, void *stream, void **params, void **extra) {
    NEEDCTX;
    struct fn *x = f;
    if (stream != (void *)0x5 || extra != NULL || bx == 0) return 1;
    if (!strcmp(x->name, "scale_f32")) { /* test-only kernel */
        float *a = P(0, float *);
        float s = P(1, float);
        int n = P(2, int);
        for (int i = 0; i < n; i++) a[i] *= s;
        return 0;
    }
    return host_kernel(x->name, gx, params);
    return 500; /* CUDA_ERROR_NOT_FOUND */
}
int cuGetErrorString(int r, const char **s) { *s = r == 201 ? "invalid device context" : "fake error"; return 0; }
int cuGetErrorName(int r, const char **s) { *s = r == 201 ? "CUDA_ERROR_INVALID_CONTEXT" : "CUDA_ERROR_FAKE"; return 0; }
int cuIpcGetMemHandle(CUipcMemHandle *h, CUdeviceptr p) {
    NEEDCTX;
    memset(h, 0, 64);
    memcpy(h->reserved, &p, 8);
    memcpy(h->reserved + 56, "sdbridge", 8);
    return 0;
}
int cuIpcOpenMemHandle_v2(CUdeviceptr *p, CUipcMemHandle h, unsigned flags) {
    NEEDCTX;
    if (memcmp(h.reserved + 56, "sdbridge", 8) || flags != 1) return 1;
    memcpy(p, h.reserved, 8);
    return 0;
}
int cuIpcCloseMemHandle(CUdeviceptr p) { return 0; }
int cuMemHostRegister_v2(void *p, size_t n, unsigned flags) { NEEDCTX; return p && n ? 0 : 1; }
int cuMemHostUnregister(void *p) { NEEDCTX; return 0; }
