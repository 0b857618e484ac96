/* fakenvrtc.c: a stand-in libnvrtc for tests without the CUDA toolkit: it
 * "compiles" any source that names at least one extern "C" kernel into a
 * placeholder image (the stand-in driver runs host twins by kernel name),
 * fails with a log for a source containing "#error", and reports
 * architectures 75..90. It checks that options arrive as a C string array
 * with --gpu-architecture first. Not a compiler. */
#include <stdlib.h>
#include <string.h>
#include <stddef.h>

struct prog { char *src; char log[128]; };

int nvrtcVersion(int *major, int *minor) { *major = 13; *minor = 0; return 0; }
const char *nvrtcGetErrorString(int r) { return r == 6 ? "NVRTC_ERROR_COMPILATION" : "NVRTC_ERROR_FAKE"; }
int nvrtcGetNumSupportedArchs(int *n) { *n = 4; return 0; }
int nvrtcGetSupportedArchs(int *a) { a[0] = 75; a[1] = 80; a[2] = 89; a[3] = 90; return 0; }
int nvrtcCreateProgram(struct prog **p, const char *src, const char *name, int nh, const char *const *h, const char *const *inc) {
    if (!src || nh != 0) return 4; /* INVALID_INPUT */
    *p = calloc(1, sizeof **p);
    (*p)->src = strdup(src);
    return 0;
}
int nvrtcDestroyProgram(struct prog **p) { free((*p)->src); free(*p); *p = NULL; return 0; }
int nvrtcCompileProgram(struct prog *p, int n, const char *const *opts) {
    if (n < 1 || strncmp(opts[0], "--gpu-architecture=", 19)) return 5; /* INVALID_OPTION */
    if (strstr(p->src, "#error")) { strcpy(p->log, "fake.cu(1): error: #error directive"); return 6; }
    if (!strstr(p->src, "extern \"C\" __global__")) { strcpy(p->log, "no kernel"); return 6; }
    return 0;
}
static const char image[] = "fake cubin";
int nvrtcGetPTXSize(struct prog *p, size_t *n) { *n = sizeof image; return 0; }
int nvrtcGetPTX(struct prog *p, char *b) { memcpy(b, image, sizeof image); return 0; }
int nvrtcGetCUBINSize(struct prog *p, size_t *n) { *n = sizeof image; return 0; }
int nvrtcGetCUBIN(struct prog *p, char *b) { memcpy(b, image, sizeof image); return 0; }
int nvrtcGetProgramLogSize(struct prog *p, size_t *n) { *n = strlen(p->log) + 1; return 0; }
int nvrtcGetProgramLog(struct prog *p, char *b) { strcpy(b, p->log); return 0; }
