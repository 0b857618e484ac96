/* fakecapture.h: how the stand-in cuBLAS and cuBLASLt queue a GEMM on a
 * stream so that stream capture sees it. The stand-in driver (fakecuda.c)
 * exports sdbFakeStreamEnqueue (not a CUDA entry point); a library finds
 * it among the loaded libraries (dlsym(RTLD_DEFAULT), which works when the
 * driver was opened RTLD_GLOBAL, as package cuda does), else by reopening
 * $SDBRIDGE_CUDA_DRIVER with RTLD_NOLOAD (a driver opened RTLD_LOCAL).
 * enqueue() records the call into the capture when the stream is being
 * captured (the graph replays it in order on cuGraphLaunch and frees the
 * arguments with the graph), and otherwise runs it at once. Without the
 * stand-in driver loaded, work runs at once. Not a general callback API. */
#ifndef FAKECAPTURE_H
#define FAKECAPTURE_H
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>

typedef int (*sdbEnqueueFn)(void *stream, int (*run)(void *), void (*release)(void *), void *arg, const char *what,
                            int *captured);

static sdbEnqueueFn enqueueHook(void) {
    static sdbEnqueueFn hook; /* not cached while absent: the driver may be loaded later */
    if (hook) return hook;
    hook = (sdbEnqueueFn)dlsym(RTLD_DEFAULT, "sdbFakeStreamEnqueue");
    const char *p = getenv("SDBRIDGE_CUDA_DRIVER");
    if (!hook && p && *p) {
        void *h = dlopen(p, RTLD_NOW | RTLD_NOLOAD);
        if (h) {
            hook = (sdbEnqueueFn)dlsym(h, "sdbFakeStreamEnqueue");
            dlclose(h); /* drops only the reference NOLOAD took */
        }
    }
    return hook;
}

/* enqueue runs run(arg) on stream now, or records it into the stream's
 * capture. It takes arg either way (release(arg) frees it). It returns
 * run's status, 0 when recorded, or failStatus when the driver refuses
 * (e.g. the legacy stream during a capture). */
static int enqueue(void *stream, int (*run)(void *), void (*release)(void *), void *arg, const char *what,
                   int failStatus) {
    sdbEnqueueFn hook = enqueueHook();
    int captured = 0;
    if (hook && hook(stream, run, release, arg, what, &captured) != 0) {
        release(arg);
        return failStatus;
    }
    if (captured) return 0;
    int rc = run(arg);
    release(arg);
    return rc;
}
#endif
