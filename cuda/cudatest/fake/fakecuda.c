/* fakecuda.c: a stand-in libcuda for tests on machines without a GPU. It
 * implements the driver entry points package cuda binds, with NVIDIA's
 * signatures, on host memory, and runs real CUDA C kernels: a module image
 * is what the stand-in NVRTC (fakenvrtc.c) produces ("SDBEMU01" + length +
 * a shared object built against the emulator header sdbemu.h); it is
 * written to a memfd and dlopened from /proc/self/fd/N, and cuLaunchKernel
 * calls the module's entry for the kernel, which runs the grid on the
 * calling thread (see sdbemu.h for the execution model).
 *
 * Everything runs synchronously on the calling thread: streams, events and
 * async copies keep CUDA's API contract (handles, errors, capture rules)
 * but work is done at once, so event times measure host time. Device
 * memory is a memfd-backed MAP_SHARED mapping per allocation, so a legacy
 * IPC handle (magic, pid, fd, size) can be opened by another process of
 * the same user through /proc/<pid>/fd/<fd>. Stream capture records
 * launches, copies, memsets and the other stand-ins' GEMMs (through
 * sdbFakeStreamEnqueue, fakecapture.h) into a graph that cuGraphLaunch
 * replays;
 * synchronous calls during a capture fail with
 * CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidate it, as on a GPU in
 * the global capture mode. A context must be current on the calling thread
 * (so a call off the device's locked thread fails as with the real
 * driver). A kernel that faults gets its name, block and thread printed
 * before the process crashes, and one that never ends is aborted by a
 * watchdog (SDBRIDGE_CUDA_EMU_TIMEOUT). Not a GPU simulator: no
 * concurrency between streams, no peer access, no unified memory. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

typedef unsigned long long CUdeviceptr;
typedef struct { char reserved[64]; } CUipcMemHandle;
static __thread void *cur;
#define NEEDCTX if (!cur) return 201 /* CUDA_ERROR_INVALID_CONTEXT */

enum {
    OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, INVALID_IMAGE = 200, INVALID_CONTEXT = 201, MAP_FAILED_ = 205,
    INVALID_HANDLE = 400, NOT_FOUND = 500, NOT_READY = 600, HOST_ALREADY_REGISTERED = 712,
    HOST_NOT_REGISTERED = 713, LAUNCH_FAILED = 719, CAPTURE_UNSUPPORTED = 900, CAPTURE_INVALIDATED = 901,
    CAPTURE_WRONG_THREAD = 908,
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

/* ---- per-call counters (for budget tests; not CUDA entry points) ----
 * Calls made by this process since it loaded the library, counted when
 * issued (a launch or copy recorded into a capture counts once, at
 * capture; a graph replay counts as one graph launch). Order is the
 * contract with cuda/cudatest/counters.go. */
enum {
    CNT_STREAM_SYNC, CNT_CTX_SYNC, CNT_EVENT_SYNC, CNT_HTOD_CALLS, CNT_HTOD_BYTES, CNT_DTOH_CALLS,
    CNT_DTOH_BYTES, CNT_DTOD_CALLS, CNT_DTOD_BYTES, CNT_MEMSETS, CNT_LAUNCHES, CNT_GRAPH_LAUNCHES,
    CNT_HOST_WORK, CNT_ALLOCS, CNT_FREES, CNT_N
};
static unsigned long long counters[CNT_N];
#define COUNT(i, v) __atomic_fetch_add(&counters[i], (unsigned long long)(v), __ATOMIC_RELAXED)

/* sdbFakeCounters copies up to n counters into out and returns how many
 * this library keeps. */
int sdbFakeCounters(unsigned long long *out, int n) {
    for (int i = 0; i < n && i < CNT_N; i++) out[i] = __atomic_load_n(&counters[i], __ATOMIC_RELAXED);
    return CNT_N;
}

/* dumpCounters writes the counters to $SDBRIDGE_FAKE_COUNTERS_DIR/<pid>
 * (one line of CNT_N numbers, replaced atomically) when that is set; the
 * syncs call it, so another process (a plugin) reports its counts as of
 * its last synchronisation. */
static void dumpCounters(void) {
    const char *dir = getenv("SDBRIDGE_FAKE_COUNTERS_DIR");
    if (!dir || !*dir) return;
    char tmp[4096], dst[4096];
    snprintf(dst, sizeof dst, "%s/%d", dir, (int)getpid());
    snprintf(tmp, sizeof tmp, "%s/.%d.tmp", dir, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    for (int i = 0; i < CNT_N; i++) fprintf(f, i ? " %llu" : "%llu", __atomic_load_n(&counters[i], __ATOMIC_RELAXED));
    fputc('\n', f);
    if (fclose(f) == 0) rename(tmp, dst);
}

/* ---- device, context ---- */
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
    case 1: *v = 1024; break;  /* max threads per block */
    case 8: *v = 49152; break; /* max shared memory per block */
    case 97: *v = 232448; break; /* max shared memory per block (opt-in) */
    case 10: *v = 32; break;   /* warp size */
    default: *v = 0;
    }
    return 0;
}
static size_t memLimit(void);
int cuDeviceTotalMem_v2(size_t *b, int d) { size_t l = memLimit(); *b = l ? l : 80ull << 30; return 0; }
int cuDevicePrimaryCtxRetain(void **c, int d) { *c = (void *)0x1234; return 0; }
int cuDevicePrimaryCtxRelease_v2(int d) { return 0; }
int cuCtxSetCurrent(void *c) { cur = c; return 0; }

/* ---- streams and capture ---- */
struct node {
    int kind; /* 0 launch, 1 copy (host or device source), 2 memset8, 3 memset32, 4 event record, 5 host work */
    void *fn;
    unsigned dims[7];
    uint64_t *vals; /* launch: the parameter values, one 8-byte slot each */
    int nvals;
    CUdeviceptr dst;
    const void *src;
    void *hdst;
    size_t n;
    unsigned v;
    void *ev;
    struct hostwork *work;
};
/* hostwork is work another stand-in library (cuBLAS, cuBLASLt) queued on a
 * stream through sdbFakeStreamEnqueue: run(arg) does it, release(arg)
 * frees arg once no graph or executable graph holds it. */
struct hostwork { int (*run)(void *); void (*release)(void *); void *arg; int refs; const char *what; };
static void dropWork(struct hostwork *w) {
    if (w && --w->refs == 0) {
        if (w->release) w->release(w->arg);
        free(w);
    }
}
struct graph { struct node *nodes; int n, cap; };
struct stream { int capturing, invalid; struct graph *g; };
static int anyCapture; /* streams capturing right now */

int cuStreamCreate(void **s, unsigned f) {
    NEEDCTX;
    *s = calloc(1, sizeof(struct stream));
    return 0;
}
int cuStreamDestroy_v2(void *s) {
    if (!s) return INVALID_HANDLE;
    free(s);
    return 0;
}

/* syncCall is the check for a synchronous operation (one that waits for
 * the device): during a capture it breaks the capture. */
static int syncCall(void) {
    if (!anyCapture) return 0;
    return CAPTURE_UNSUPPORTED;
}

static void addNode(struct stream *st, struct node n) {
    struct graph *g = st->g;
    if (g->n == g->cap) {
        g->cap = g->cap ? 2 * g->cap : 16;
        g->nodes = realloc(g->nodes, g->cap * sizeof *g->nodes);
    }
    g->nodes[g->n++] = n;
}

int cuStreamSynchronize(void *s) {
    NEEDCTX;
    COUNT(CNT_STREAM_SYNC, 1);
    dumpCounters();
    struct stream *st = s;
    if (st && st->capturing) {
        st->invalid = 1;
        return CAPTURE_UNSUPPORTED;
    }
    return syncCall();
}
int cuCtxSynchronize(void) { NEEDCTX; COUNT(CNT_CTX_SYNC, 1); dumpCounters(); return syncCall(); }

int cuStreamBeginCapture_v2(void *s, int mode) {
    NEEDCTX;
    struct stream *st = s;
    if (!st) return CAPTURE_UNSUPPORTED; /* the legacy stream cannot be captured */
    if (st->capturing) return INVALID_VALUE;
    if (mode < 0 || mode > 2) return INVALID_VALUE;
    st->capturing = 1;
    st->invalid = 0;
    st->g = calloc(1, sizeof(struct graph));
    anyCapture++;
    return 0;
}
static void freeGraph(struct graph *g) {
    if (!g) return;
    for (int i = 0; i < g->n; i++) {
        free(g->nodes[i].vals);
        dropWork(g->nodes[i].work);
    }
    free(g->nodes);
    free(g);
}
int cuStreamEndCapture(void *s, void **out) {
    NEEDCTX;
    struct stream *st = s;
    if (!st || !st->capturing) return INVALID_VALUE;
    st->capturing = 0;
    anyCapture--;
    if (st->invalid) {
        freeGraph(st->g);
        st->g = NULL;
        *out = NULL;
        return CAPTURE_INVALIDATED;
    }
    *out = st->g;
    st->g = NULL;
    return 0;
}
int cuStreamIsCapturing(void *s, int *status) {
    NEEDCTX;
    struct stream *st = s;
    *status = st && st->capturing ? (st->invalid ? 2 : 1) : 0; /* NONE, ACTIVE, INVALIDATED */
    return 0;
}

/* ---- device memory: one memfd per allocation ---- */
struct alloc { CUdeviceptr base; size_t size, mapped; int fd; int ipcRefs; int imported; };
static struct alloc *allocs;
static int nallocs, capallocs;

static int findAlloc(CUdeviceptr p) { /* index of the allocation holding p, or -1 */
    int lo = 0, hi = nallocs - 1;
    while (lo <= hi) {
        int m = (lo + hi) / 2;
        if (p < allocs[m].base) hi = m - 1;
        else if (p >= allocs[m].base + (allocs[m].size ? allocs[m].size : 1)) lo = m + 1;
        else return m;
    }
    return -1;
}
static void addAlloc(struct alloc a) {
    if (nallocs == capallocs) {
        capallocs = capallocs ? 2 * capallocs : 64;
        allocs = realloc(allocs, capallocs * sizeof *allocs);
    }
    int i = nallocs;
    while (i > 0 && allocs[i - 1].base > a.base) {
        allocs[i] = allocs[i - 1];
        i--;
    }
    allocs[i] = a;
    nallocs++;
}
static void delAlloc(int i) {
    memmove(allocs + i, allocs + i + 1, (nallocs - i - 1) * sizeof *allocs);
    nallocs--;
}

static int fakeMap(CUdeviceptr *p, size_t n, size_t mapped);

/* ---- device memory limit ----
 * SDBRIDGE_FAKE_CUDA_MEM_LIMIT=<bytes> (read at each call) or
 * sdbFakeSetMemLimit (from Go through purego; wins over the variable while
 * set) makes a device of that size: cuMemAlloc_v2 past it returns
 * CUDA_ERROR_OUT_OF_MEMORY, cuMemGetInfo_v2 and cuDeviceTotalMem_v2 report
 * it. Allocations count in whole 4 KiB pages; IPC imports and pinned host
 * memory do not count (each process has its own device). */
static size_t memUsed;          /* bytes of live cuMemAlloc_v2 allocations (mu held) */
static size_t memPeak;          /* the most memUsed reached since the last sdbFakeMemPeak(1) */
static long long memLimitSet = -1; /* sdbFakeSetMemLimit's value; -1: the variable */
static size_t memLimit(void) {  /* 0: no limit */
    long long set = __atomic_load_n(&memLimitSet, __ATOMIC_RELAXED);
    if (set >= 0) return (size_t)set;
    const char *v = getenv("SDBRIDGE_FAKE_CUDA_MEM_LIMIT");
    return v && *v ? (size_t)strtoull(v, NULL, 10) : 0;
}
/* sdbFakeSetMemLimit sets the device size in bytes (0: unlimited; negative:
 * back to SDBRIDGE_FAKE_CUDA_MEM_LIMIT). It returns the bytes in use. */
unsigned long long sdbFakeSetMemLimit(long long n) {
    __atomic_store_n(&memLimitSet, n < 0 ? -1 : n, __ATOMIC_RELAXED);
    pthread_mutex_lock(&mu);
    size_t used = memUsed;
    pthread_mutex_unlock(&mu);
    return used;
}

/* sdbFakeMemPeak returns the most device memory in use at once since the
 * last reset (reset != 0: start again from what is in use now). */
unsigned long long sdbFakeMemPeak(int reset) {
    pthread_mutex_lock(&mu);
    size_t peak = memPeak;
    if (reset) memPeak = memUsed;
    pthread_mutex_unlock(&mu);
    return peak;
}

int cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
    NEEDCTX;
    if (n == 0) return INVALID_VALUE;
    COUNT(CNT_ALLOCS, 1);
    size_t mapped = (n + 4095) & ~(size_t)4095;
    size_t limit = memLimit();
    pthread_mutex_lock(&mu);
    if (limit && (mapped > limit || memUsed > limit - mapped)) {
        pthread_mutex_unlock(&mu);
        return OUT_OF_MEMORY;
    }
    memUsed += mapped; /* taken back below if the mapping fails */
    if (memUsed > memPeak) memPeak = memUsed;
    pthread_mutex_unlock(&mu);
    int r = fakeMap(p, n, mapped);
    if (r) {
        pthread_mutex_lock(&mu);
        memUsed -= mapped;
        pthread_mutex_unlock(&mu);
    }
    return r;
}
/* fakeMap makes the memory of one allocation of n bytes (mapped: n rounded
 * to pages) and records it. */
static int fakeMap(CUdeviceptr *p, size_t n, size_t mapped) {
    int fd = memfd_create("sdb-fake-device-memory", MFD_CLOEXEC);
    void *m;
    if (fd < 0) {
        /* Out of file descriptors (a low RLIMIT_NOFILE and many live
         * allocations): plain memory, which cuIpcGetMemHandle refuses. */
        static int told;
        if (!__atomic_exchange_n(&told, 1, __ATOMIC_RELAXED))
            fprintf(stderr, "stand-in driver: memfd_create failed (%m); further allocations cannot be exported by IPC\n");
        m = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return OUT_OF_MEMORY;
    } else {
        if (ftruncate(fd, mapped) != 0) {
            close(fd);
            return OUT_OF_MEMORY;
        }
        m = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) {
            close(fd);
            return OUT_OF_MEMORY;
        }
    }
    struct alloc a = {(CUdeviceptr)m, n, mapped, fd, 0, 0};
    pthread_mutex_lock(&mu);
    addAlloc(a);
    pthread_mutex_unlock(&mu);
    *p = a.base;
    return 0;
}
int cuMemFree_v2(CUdeviceptr p) {
    NEEDCTX;
    COUNT(CNT_FREES, 1);
    pthread_mutex_lock(&mu);
    int i = findAlloc(p);
    if (i < 0 || allocs[i].base != p || allocs[i].imported) {
        pthread_mutex_unlock(&mu);
        return INVALID_VALUE;
    }
    struct alloc a = allocs[i];
    delAlloc(i);
    memUsed -= a.mapped;
    pthread_mutex_unlock(&mu);
    munmap((void *)a.base, a.mapped);
    if (a.fd >= 0) close(a.fd);
    return 0;
}
int cuMemGetAddressRange_v2(CUdeviceptr *base, size_t *size, CUdeviceptr p) {
    NEEDCTX;
    pthread_mutex_lock(&mu);
    int i = findAlloc(p);
    if (i >= 0) {
        if (base) *base = allocs[i].base;
        if (size) *size = allocs[i].size;
    }
    pthread_mutex_unlock(&mu);
    return i < 0 ? NOT_FOUND : 0;
}
int cuMemGetInfo_v2(size_t *f, size_t *t) {
    NEEDCTX;
    size_t limit = memLimit();
    if (!limit) {
        *f = 1ull << 30;
        *t = 80ull << 30;
        return 0;
    }
    pthread_mutex_lock(&mu);
    *f = memUsed < limit ? limit - memUsed : 0;
    *t = limit;
    pthread_mutex_unlock(&mu);
    return 0;
}

/* ---- copies and memsets ---- */
static void doMemset32(CUdeviceptr d, unsigned v, size_t n) {
    for (size_t i = 0; i < n; i++) ((unsigned *)d)[i] = v;
}
int cuMemcpyHtoD_v2(CUdeviceptr d, const void *s, size_t n) { NEEDCTX; COUNT(CNT_HTOD_CALLS, 1); COUNT(CNT_HTOD_BYTES, n); if (syncCall()) return syncCall(); memcpy((void *)d, s, n); return 0; }
int cuMemcpyDtoH_v2(void *d, CUdeviceptr s, size_t n) { NEEDCTX; COUNT(CNT_DTOH_CALLS, 1); COUNT(CNT_DTOH_BYTES, n); if (syncCall()) return syncCall(); memcpy(d, (void *)s, n); return 0; }
int cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { NEEDCTX; COUNT(CNT_DTOD_CALLS, 1); COUNT(CNT_DTOD_BYTES, n); if (syncCall()) return syncCall(); memmove((void *)d, (void *)s, n); return 0; }
int cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { NEEDCTX; COUNT(CNT_MEMSETS, 1); if (syncCall()) return syncCall(); memset((void *)d, v, n); return 0; }
int cuMemsetD32_v2(CUdeviceptr d, unsigned v, size_t n) { NEEDCTX; COUNT(CNT_MEMSETS, 1); if (syncCall()) return syncCall(); doMemset32(d, v, n); return 0; }

/* asyncOp runs n at once, or records it when s is capturing. */
static int asyncOp(void *s, struct node n);
int cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *src, size_t n, void *s) {
    NEEDCTX;
    COUNT(CNT_HTOD_CALLS, 1);
    COUNT(CNT_HTOD_BYTES, n);
    struct node x = {.kind = 1, .dst = d, .src = src, .n = n};
    return asyncOp(s, x);
}
int cuMemcpyDtoHAsync_v2(void *d, CUdeviceptr src, size_t n, void *s) {
    NEEDCTX;
    COUNT(CNT_DTOH_CALLS, 1);
    COUNT(CNT_DTOH_BYTES, n);
    struct node x = {.kind = 1, .hdst = d, .src = (const void *)src, .n = n};
    return asyncOp(s, x);
}
int cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr src, size_t n, void *s) {
    NEEDCTX;
    COUNT(CNT_DTOD_CALLS, 1);
    COUNT(CNT_DTOD_BYTES, n);
    struct node x = {.kind = 1, .dst = d, .src = (const void *)src, .n = n};
    return asyncOp(s, x);
}
int cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void *s) {
    NEEDCTX;
    COUNT(CNT_MEMSETS, 1);
    struct node x = {.kind = 2, .dst = d, .v = v, .n = n};
    return asyncOp(s, x);
}
int cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, void *s) {
    NEEDCTX;
    COUNT(CNT_MEMSETS, 1);
    struct node x = {.kind = 3, .dst = d, .v = v, .n = n};
    return asyncOp(s, x);
}

/* ---- pinned host memory ---- */
struct hostreg { char *p; size_t n; int alloc; };
static struct hostreg *hosts;
static int nhosts, caphosts;
static int findHost(const char *p, size_t n) { /* first registration overlapping [p, p+n) */
    for (int i = 0; i < nhosts; i++)
        if (p < hosts[i].p + hosts[i].n && hosts[i].p < p + (n ? n : 1)) return i;
    return -1;
}
static void addHost(char *p, size_t n, int alloc) {
    if (nhosts == caphosts) {
        caphosts = caphosts ? 2 * caphosts : 16;
        hosts = realloc(hosts, caphosts * sizeof *hosts);
    }
    hosts[nhosts++] = (struct hostreg){p, n, alloc};
}
int cuMemHostAlloc(void **p, size_t n, unsigned flags) {
    NEEDCTX;
    if (n == 0 || flags > 7) return INVALID_VALUE;
    void *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return OUT_OF_MEMORY;
    pthread_mutex_lock(&mu);
    addHost(m, n, 1);
    pthread_mutex_unlock(&mu);
    *p = m;
    return 0;
}
int cuMemFreeHost(void *p) {
    NEEDCTX;
    pthread_mutex_lock(&mu);
    int i = findHost(p, 1);
    if (i < 0 || hosts[i].p != p || !hosts[i].alloc) {
        pthread_mutex_unlock(&mu);
        return INVALID_VALUE;
    }
    struct hostreg h = hosts[i];
    hosts[i] = hosts[--nhosts];
    pthread_mutex_unlock(&mu);
    munmap(h.p, h.n);
    return 0;
}
int cuMemHostRegister_v2(void *p, size_t n, unsigned flags) {
    NEEDCTX;
    if (!p || !n || flags > 15) return INVALID_VALUE;
    pthread_mutex_lock(&mu);
    int rc = 0;
    if (findHost(p, n) >= 0) rc = HOST_ALREADY_REGISTERED;
    else addHost(p, n, 0);
    pthread_mutex_unlock(&mu);
    return rc;
}
int cuMemHostUnregister(void *p) {
    NEEDCTX;
    pthread_mutex_lock(&mu);
    int i = findHost(p, 1), rc = 0;
    if (i < 0 || hosts[i].p != p || hosts[i].alloc) rc = HOST_NOT_REGISTERED;
    else hosts[i] = hosts[--nhosts];
    pthread_mutex_unlock(&mu);
    return rc;
}

/* ---- events ---- */
struct event { double ms; int recorded; unsigned flags; };
static double nowMS(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}
int cuEventCreate(void **e, unsigned flags) {
    NEEDCTX;
    if (flags > 15) return INVALID_VALUE;
    struct event *ev = calloc(1, sizeof *ev);
    ev->flags = flags;
    *e = ev;
    return 0;
}
int cuEventRecord(void *e, void *s) {
    NEEDCTX;
    if (!e) return INVALID_HANDLE;
    struct node x = {.kind = 4, .ev = e};
    return asyncOp(s, x);
}
int cuEventSynchronize(void *e) {
    NEEDCTX;
    if (!e) return INVALID_HANDLE;
    COUNT(CNT_EVENT_SYNC, 1);
    dumpCounters();
    return syncCall();
}
int cuEventElapsedTime(float *ms, void *a, void *b) {
    NEEDCTX;
    struct event *x = a, *y = b;
    if (!x || !y) return INVALID_HANDLE;
    if ((x->flags | y->flags) & 2) return INVALID_HANDLE; /* CU_EVENT_DISABLE_TIMING */
    if (!x->recorded || !y->recorded) return NOT_READY;
    *ms = (float)(y->ms - x->ms);
    return 0;
}
int cuEventElapsedTime_v2(float *ms, void *a, void *b) { return cuEventElapsedTime(ms, a, b); }
int cuEventDestroy_v2(void *e) {
    if (!e) return INVALID_HANDLE;
    free(e);
    return 0;
}

/* ---- modules and launches ---- */
struct launch { /* sdb_emu::Launch */
    unsigned grid[3], block[3];
    unsigned shmem;
    void **params;
    const char *name;
    char *err;
    int errlen;
};
struct entry { /* sdb_emu::Entry */
    const char *name;
    int (*run)(const struct launch *);
    int (*nparams)(void);
};
struct module { void *dl; int fd; const struct entry *entries; int (*where)(const void *, char *, int); };
struct function { struct module *m; const struct entry *e; int maxShared; };

static char lastErr[1024];
static int lastErrCode;

int cuModuleLoadData(void **out, const void *img) {
    NEEDCTX;
    const unsigned char *b = img;
    uint64_t len;
    if (!img || memcmp(b, "SDBEMU01", 8)) return INVALID_IMAGE;
    memcpy(&len, b + 8, 8);
    int fd = memfd_create("sdb-emu-module", MFD_CLOEXEC);
    if (fd < 0) return OUT_OF_MEMORY;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, b + 16 + off, len - off);
        if (w <= 0) {
            close(fd);
            return INVALID_IMAGE;
        }
        off += w;
    }
    char path[4096];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    const char *keep = getenv("SDBRIDGE_CUDA_EMU_MODULE_DIR"); /* profiling: a real file, so perf names symbols */
    if (keep && *keep) {
        static int seq;
        snprintf(path, sizeof path, "%s/module-%d-%d.so", keep, (int)getpid(), __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED));
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(b + 16, 1, len, f) != len || fclose(f)) {
            close(fd);
            return INVALID_IMAGE;
        }
    }
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        snprintf(lastErr, sizeof lastErr, "stand-in driver: dlopen of the emulator module: %s", dlerror());
        lastErrCode = INVALID_IMAGE;
        fprintf(stderr, "%s\n", lastErr);
        close(fd);
        return INVALID_IMAGE;
    }
    const struct entry *e = dlsym(dl, "sdb_emu_entries");
    if (!e) {
        dlclose(dl);
        close(fd);
        return INVALID_IMAGE;
    }
    struct module *m = calloc(1, sizeof *m);
    m->dl = dl;
    m->fd = fd; /* kept open while loaded: a reused path would make dlopen return this module */
    m->entries = e;
    m->where = (int (*)(const void *, char *, int))dlsym(dl, "sdb_emu_where");
    *out = m;
    return 0;
}
int cuModuleUnload(void *p) {
    struct module *m = p;
    if (!m) return INVALID_HANDLE;
    dlclose(m->dl);
    close(m->fd);
    free(m);
    return 0;
}
int cuModuleGetFunction(void **f, void *p, const char *name) {
    NEEDCTX;
    struct module *m = p;
    if (!m || !name) return INVALID_VALUE;
    for (const struct entry *e = m->entries; e->name; e++)
        if (!strcmp(e->name, name)) {
            struct function *fn = calloc(1, sizeof *fn);
            fn->m = m;
            fn->e = e;
            *f = fn;
            return 0;
        }
    return NOT_FOUND;
}
int cuFuncSetAttribute(void *f, int attr, int v) {
    NEEDCTX;
    struct function *fn = f;
    if (!fn) return INVALID_HANDLE;
    if (attr == 8) { /* CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES */
        if (v < 0 || v > 232448) return INVALID_VALUE;
        fn->maxShared = v;
    }
    return 0;
}

/* A fault inside a kernel (out-of-range pointer, fiber stack overflow)
 * would only show the Go runtime's crash with a PC in an anonymous module:
 * this handler first names the kernel, block and thread on stderr, then
 * puts the previous handler back and returns, so the faulting instruction
 * runs again and the previous (Go's) handler reports the crash as usual.
 * It is installed around launches (again after it stood aside). */
static __thread struct module *faultMod;
static struct sigaction prevSegv, prevBus;
static int faultInstalled;
static void onFault(int sig, siginfo_t *si, void *uc) {
    char msg[1200];
    int n = 0;
    if (faultMod && faultMod->where) {
        char where[1000];
        if (faultMod->where(si->si_addr, where, sizeof where) > 0)
            n = snprintf(msg, sizeof msg, "sdb-emu: %s in %s at address %p\n", sig == SIGSEGV ? "SIGSEGV" : "SIGBUS",
                         where, si->si_addr);
    }
    if (n > 0) {
        ssize_t w = write(2, msg, n < (int)sizeof msg ? n : (int)sizeof msg - 1);
        (void)w;
    }
    sigaction(SIGSEGV, &prevSegv, NULL);
    sigaction(SIGBUS, &prevBus, NULL);
    __atomic_store_n(&faultInstalled, 0, __ATOMIC_RELEASE);
}
static void installFault(void) {
    if (__atomic_load_n(&faultInstalled, __ATOMIC_ACQUIRE)) return;
    const char *off = getenv("SDBRIDGE_CUDA_EMU_FAULTS");
    if (off && !strcmp(off, "0")) return;
    pthread_mutex_lock(&mu);
    if (!faultInstalled) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = onFault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGSEGV, &sa, &prevSegv) == 0 && sigaction(SIGBUS, &sa, &prevBus) == 0) faultInstalled = 1;
    }
    pthread_mutex_unlock(&mu);
}

/* A kernel that never ends (a spin-wait on another block or thread, which
 * never runs meanwhile: there is no preemption) would hang the test: a
 * watchdog thread aborts the process with the kernel's name once a launch
 * has run for $SDBRIDGE_CUDA_EMU_TIMEOUT seconds (default 300; 0: off). */
enum { maxRunning = 32 };
static struct { const char *name; double start; int used; } running[maxRunning];
static pthread_once_t watchOnce = PTHREAD_ONCE_INIT;
static double watchLimit;

static void *watchdog(void *arg) {
    (void)arg;
    for (;;) {
        sleep(1);
        double now = nowMS();
        pthread_mutex_lock(&mu);
        for (int i = 0; i < maxRunning; i++)
            if (running[i].used && now - running[i].start > watchLimit * 1e3) {
                fprintf(stderr,
                        "sdb-emu: kernel %s has run for %.0f s: an endless loop? (a spin-wait on another block or "
                        "thread never ends under the emulator, which does not preempt); aborting "
                        "(SDBRIDGE_CUDA_EMU_TIMEOUT)\n",
                        running[i].name, (now - running[i].start) / 1e3);
                abort();
            }
        pthread_mutex_unlock(&mu);
    }
    return NULL;
}

static void startWatchdog(void) {
    const char *v = getenv("SDBRIDGE_CUDA_EMU_TIMEOUT");
    watchLimit = v && *v ? atof(v) : 300;
    if (watchLimit <= 0) return;
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    sigset_t all, old;
    sigfillset(&all); /* the watchdog takes no signals (the Go runtime's go to its threads) */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_create(&t, &a, watchdog, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&a);
}

/* watchBegin registers a launch with the watchdog; it returns its slot or -1. */
static int watchBegin(const char *name) {
    pthread_once(&watchOnce, startWatchdog);
    if (watchLimit <= 0) return -1;
    pthread_mutex_lock(&mu);
    int slot = -1;
    for (int i = 0; i < maxRunning && slot < 0; i++)
        if (!running[i].used) {
            running[i].used = 1;
            running[i].name = name;
            running[i].start = nowMS();
            slot = i;
        }
    pthread_mutex_unlock(&mu);
    return slot;
}

static void watchEnd(int slot) {
    if (slot < 0) return;
    pthread_mutex_lock(&mu);
    running[slot].used = 0;
    pthread_mutex_unlock(&mu);
}

static int runLaunch(struct function *fn, const unsigned *d, void **params) {
    struct launch L = {{d[0], d[1], d[2]}, {d[3], d[4], d[5]}, d[6], params, fn->e->name, lastErr, sizeof lastErr};
    if (d[6] > 49152 && d[6] > (unsigned)fn->maxShared) {
        snprintf(lastErr, sizeof lastErr,
                 "stand-in driver: kernel %s: %u bytes of dynamic shared memory need cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)",
                 fn->e->name, d[6]);
        lastErrCode = INVALID_VALUE;
        return INVALID_VALUE;
    }
    lastErr[0] = 0;
    installFault();
    faultMod = fn->m;
    int slot = watchBegin(fn->e->name);
    int rc = fn->e->run(&L);
    watchEnd(slot);
    faultMod = NULL;
    lastErrCode = rc;
    return rc;
}

int cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned sh, void *stream, void **params, void **extra) {
    NEEDCTX;
    struct function *fn = f;
    if (!fn) return INVALID_HANDLE;
    if (extra != NULL) return INVALID_VALUE;
    COUNT(CNT_LAUNCHES, 1);
    struct node x = {.kind = 0, .fn = fn, .dims = {gx, gy, gz, bx, by, bz, sh}};
    struct stream *st = stream;
    if (st && st->capturing) {
        int n = fn->e->nparams();
        x.vals = calloc(n + 1, 8);
        x.nvals = n;
        for (int i = 0; i < n; i++) {
            if (!params || !params[i]) {
                free(x.vals);
                return INVALID_VALUE;
            }
            memcpy(&x.vals[i], params[i], 8);
        }
        addNode(st, x);
        return 0;
    }
    return runLaunch(fn, x.dims, params);
}

static int runNode(const struct node *n) {
    switch (n->kind) {
    case 0: {
        void *ptrs[65];
        int k = n->nvals < 64 ? n->nvals : 64;
        for (int i = 0; i < k; i++) ptrs[i] = &n->vals[i];
        ptrs[k] = NULL;
        return runLaunch(n->fn, n->dims, ptrs);
    }
    case 1:
        memmove(n->hdst ? n->hdst : (void *)n->dst, n->src, n->n);
        return 0;
    case 2: memset((void *)n->dst, (int)n->v, n->n); return 0;
    case 3: doMemset32(n->dst, n->v, n->n); return 0;
    case 4: {
        struct event *e = n->ev;
        e->ms = nowMS();
        e->recorded = 1;
        return 0;
    }
    case 5: {
        int rc = n->work->run(n->work->arg);
        if (rc == 0) return 0;
        fprintf(stderr, "sdb-fake: replayed %s failed with status %d\n", n->work->what, rc);
        snprintf(lastErr, sizeof lastErr, "replayed %s failed with status %d", n->work->what, rc);
        lastErrCode = LAUNCH_FAILED;
        return LAUNCH_FAILED;
    }
    }
    return INVALID_VALUE;
}

static int asyncOp(void *s, struct node n) {
    struct stream *st = s;
    if (st && st->capturing) {
        addNode(st, n);
        return 0;
    }
    if (!st && anyCapture) return CAPTURE_UNSUPPORTED; /* the legacy stream syncs with capturing streams */
    return runNode(&n);
}

/* sdbFakeStreamEnqueue is the stand-in driver's hook for the other
 * stand-in libraries (not a CUDA entry point; fakecapture.h finds it):
 * work queued on stream s. While s is being captured the work is recorded
 * into the capture as a node (it takes arg: release(arg) runs when the
 * last graph holding it is destroyed) and *captured is set to 1; replays
 * call run(arg) in issue order with the graph's other nodes. Otherwise
 * *captured is 0 and the caller runs the work itself at once (all work is
 * synchronous here). The legacy stream (NULL) during any capture gives
 * CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, as an async copy does. what
 * names the work in replay errors (a static string). */
int sdbFakeStreamEnqueue(void *s, int (*run)(void *), void (*release)(void *), void *arg, const char *what, int *captured) {
    NEEDCTX;
    struct stream *st = s;
    *captured = 0;
    if (!run) return INVALID_VALUE;
    COUNT(CNT_HOST_WORK, 1);
    if (st && st->capturing) {
        struct hostwork *w = calloc(1, sizeof *w);
        if (!w) return OUT_OF_MEMORY;
        *w = (struct hostwork){run, release, arg, 1, what ? what : "host work"};
        addNode(st, (struct node){.kind = 5, .work = w});
        *captured = 1;
        return 0;
    }
    if (!st && anyCapture) return CAPTURE_UNSUPPORTED;
    return 0;
}

/* ---- graphs ---- */
struct exec { struct node *nodes; int n; };
int cuGraphInstantiateWithFlags(void **out, void *g, unsigned long long flags) {
    NEEDCTX;
    struct graph *gr = g;
    if (!gr) return INVALID_VALUE;
    struct exec *x = calloc(1, sizeof *x);
    x->n = gr->n;
    x->nodes = calloc(gr->n ? gr->n : 1, sizeof *x->nodes);
    for (int i = 0; i < gr->n; i++) {
        x->nodes[i] = gr->nodes[i];
        if (gr->nodes[i].vals) {
            x->nodes[i].vals = malloc((gr->nodes[i].nvals + 1) * 8);
            memcpy(x->nodes[i].vals, gr->nodes[i].vals, (gr->nodes[i].nvals + 1) * 8);
        }
        if (x->nodes[i].work) x->nodes[i].work->refs++;
    }
    *out = x;
    return 0;
}
int cuGraphLaunch(void *e, void *s) {
    NEEDCTX;
    struct exec *x = e;
    struct stream *st = s;
    if (!x) return INVALID_HANDLE;
    if ((st && st->capturing) || (!st && anyCapture)) return CAPTURE_UNSUPPORTED;
    COUNT(CNT_GRAPH_LAUNCHES, 1);
    for (int i = 0; i < x->n; i++) {
        int rc = runNode(&x->nodes[i]);
        if (rc) return rc;
    }
    return 0;
}
int cuGraphExecDestroy(void *e) {
    struct exec *x = e;
    if (!x) return INVALID_HANDLE;
    for (int i = 0; i < x->n; i++) {
        free(x->nodes[i].vals);
        dropWork(x->nodes[i].work);
    }
    free(x->nodes);
    free(x);
    return 0;
}
int cuGraphDestroy(void *g) {
    if (!g) return INVALID_HANDLE;
    freeGraph(g);
    return 0;
}

/* ---- errors ---- */
static const char *errName(int r) {
    switch (r) {
    case 0: return "CUDA_SUCCESS";
    case 1: return "CUDA_ERROR_INVALID_VALUE";
    case 2: return "CUDA_ERROR_OUT_OF_MEMORY";
    case 101: return "CUDA_ERROR_INVALID_DEVICE";
    case 200: return "CUDA_ERROR_INVALID_IMAGE";
    case 201: return "CUDA_ERROR_INVALID_CONTEXT";
    case 205: return "CUDA_ERROR_MAP_FAILED";
    case 400: return "CUDA_ERROR_INVALID_HANDLE";
    case 500: return "CUDA_ERROR_NOT_FOUND";
    case 600: return "CUDA_ERROR_NOT_READY";
    case 712: return "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED";
    case 713: return "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED";
    case 719: return "CUDA_ERROR_LAUNCH_FAILED";
    case 900: return "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
    case 901: return "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED";
    default: return NULL;
    }
}
static const char *errDesc(int r) {
    switch (r) {
    case 1: return "invalid argument";
    case 2: return "out of memory";
    case 200: return "device kernel image is invalid";
    case 201: return "invalid device context";
    case 400: return "invalid resource handle";
    case 500: return "named symbol not found";
    case 600: return "device not ready";
    case 719: return "unspecified launch failure";
    case 900: return "operation not permitted when stream is capturing";
    case 901: return "operation failed due to a previous error during capture";
    default: return "stand-in driver error";
    }
}
static __thread char errText[1200];
int cuGetErrorString(int r, const char **s) {
    const char *d = errDesc(r);
    if (r == lastErrCode && lastErr[0]) { /* the emulator's reason for the last failed launch */
        snprintf(errText, sizeof errText, "%s (%s)", d, lastErr);
        *s = errText;
        return 0;
    }
    *s = d;
    return 0;
}
int cuGetErrorName(int r, const char **s) {
    const char *n = errName(r);
    if (!n) {
        *s = NULL;
        return INVALID_VALUE;
    }
    *s = n;
    return 0;
}

/* ---- legacy IPC: (magic, pid, fd, size, offset) of a memfd mapping ---- */
struct ipcHandle { char magic[8]; int32_t pid, fd; uint64_t size; };
int cuIpcGetMemHandle(CUipcMemHandle *h, CUdeviceptr p) {
    NEEDCTX;
    pthread_mutex_lock(&mu);
    int i = findAlloc(p);
    int rc = (i < 0 || allocs[i].base != p || allocs[i].imported || allocs[i].fd < 0) ? INVALID_VALUE : 0;
    struct ipcHandle x = {"sdbIPC01", (int32_t)getpid(), 0, 0};
    if (!rc) {
        x.fd = allocs[i].fd;
        x.size = allocs[i].size;
    }
    pthread_mutex_unlock(&mu);
    if (rc) return rc;
    memset(h, 0, sizeof *h);
    memcpy(h->reserved, &x, sizeof x);
    return 0;
}
int cuIpcOpenMemHandle_v2(CUdeviceptr *p, CUipcMemHandle h, unsigned flags) {
    NEEDCTX;
    struct ipcHandle x;
    memcpy(&x, h.reserved, sizeof x);
    if (memcmp(x.magic, "sdbIPC01", 8) || flags != 1 || x.size == 0) return INVALID_VALUE;
    if (x.pid == getpid()) { /* the real driver refuses; the stand-in hands back the allocation */
        pthread_mutex_lock(&mu);
        int i = -1;
        for (int k = 0; k < nallocs; k++)
            if (allocs[k].fd == x.fd && x.fd >= 0 && !allocs[k].imported) i = k;
        if (i >= 0) {
            allocs[i].ipcRefs++;
            *p = allocs[i].base;
        }
        pthread_mutex_unlock(&mu);
        return i < 0 ? INVALID_VALUE : 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)x.pid, (int)x.fd);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return MAP_FAILED_;
    size_t mapped = (x.size + 4095) & ~(size_t)4095;
    void *m = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        close(fd);
        return MAP_FAILED_;
    }
    struct alloc a = {(CUdeviceptr)m, x.size, mapped, fd, 1, 1};
    pthread_mutex_lock(&mu);
    addAlloc(a);
    pthread_mutex_unlock(&mu);
    *p = a.base;
    return 0;
}
int cuIpcCloseMemHandle(CUdeviceptr p) {
    NEEDCTX;
    pthread_mutex_lock(&mu);
    int i = findAlloc(p);
    if (i < 0 || allocs[i].base != p || allocs[i].ipcRefs == 0) {
        pthread_mutex_unlock(&mu);
        return INVALID_VALUE;
    }
    struct alloc a = allocs[i];
    if (a.imported) delAlloc(i);
    else allocs[i].ipcRefs--;
    pthread_mutex_unlock(&mu);
    if (a.imported) {
        munmap((void *)a.base, a.mapped);
        close(a.fd);
    }
    return 0;
}
