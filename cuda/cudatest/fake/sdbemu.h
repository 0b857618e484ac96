/* sdbemu.h: the CUDA C emulator's runtime, force-included (-include) by the
 * stand-in NVRTC (fakenvrtc.c) in front of every kernel source it compiles
 * with the host C++ compiler (-DSDB_EMU). It supplies the CUDA keywords,
 * built-in variables, vector types, math and bit intrinsics, atomics, warp
 * collectives and __syncthreads, and runs a launch grid: blocks one after
 * another, and inside a block one fiber (user-level thread with its own
 * stack) per CUDA thread, switched cooperatively at barriers and warp
 * collectives only (a minimal x86-64 context switch; ucontext elsewhere).
 *
 * Semantics (documented for kernel writers; see README.md):
 *  - __syncthreads waits for every thread of the block that has not exited;
 *    threads that returned do not block it. All waiting threads must sit at
 *    the same __syncthreads (source line): waiting at different ones is
 *    reported as a launch failure (CUDA_ERROR_LAUNCH_FAILED, 719) with a
 *    message on stderr, as is any state where no thread can go on
 *    (deadlock). A launch never hangs.
 *  - Warp collectives (__shfl*_sync, __ballot_sync, __any/__all_sync,
 *    __reduce_*_sync, __syncwarp) complete when every lane named in the mask that has not
 *    exited has arrived at a collective of the same kind with the same
 *    mask. Exited lanes do not take part: a shuffle from one returns the
 *    caller's own value, a ballot counts it as 0. Values are moved as raw
 *    bytes (exact for 4- and 8-byte types).
 *  - Blocks run serially, so atomics are exact and static __shared__ is per
 *    block (function statics); all shared memory, static and dynamic, is
 *    filled with 0xff bytes (NaN for floats, -1 for ints) at each block's
 *    start, so a read before a write shows instead of seeing the previous
 *    block's values.
 *  - No memory model beyond that: no races are detected, __threadfence is a
 *    compiler barrier, out-of-range pointers crash the process.
 * Not emulated: cooperative groups, tensor-core PTX (kernels keep asm
 * behind #ifndef SDB_EMU), textures, clock(), device-side malloc.
 */
#ifndef SDB_EMU_RUNTIME_H
#define SDB_EMU_RUNTIME_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <pthread.h>
#include <tuple>
#include <type_traits>
#include <utility>
/* The fibers switch with a few instructions of x86-64 assembly; elsewhere,
 * or with -DSDB_EMU_UCONTEXT (for comparison), with ucontext. */
#if defined(__x86_64__) && !defined(SDB_EMU_UCONTEXT)
#define SDB_EMU_ASM_SWITCH 1
#else
#define SDB_EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

/* ---- keywords ---- */
#define __global__
#define __device__
#define __host__
#define __constant__
/* Static __shared__ variables are function statics gathered in one section,
 * which is 0xff-filled at each block's start (see runGrid). */
#define __shared__ static __attribute__((section("sdb_shared")))
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __managed__
/* __restrict__ is a GNU C++ keyword already. */

/* ---- vector types ---- */
struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
#define SDB_VEC2(T, N, A) struct __attribute__((aligned(A))) N { T x, y; }; \
    static inline N make_##N(T x, T y) { N v; v.x = x; v.y = y; return v; }
#define SDB_VEC3(T, N) struct N { T x, y, z; }; \
    static inline N make_##N(T x, T y, T z) { N v; v.x = x; v.y = y; v.z = z; return v; }
#define SDB_VEC4(T, N, A) struct __attribute__((aligned(A))) N { T x, y, z, w; }; \
    static inline N make_##N(T x, T y, T z, T w) { N v; v.x = x; v.y = y; v.z = z; v.w = w; return v; }
SDB_VEC2(float, float2, 8)
SDB_VEC3(float, float3)
SDB_VEC4(float, float4, 16)
SDB_VEC2(int, int2, 8)
SDB_VEC3(int, int3)
SDB_VEC4(int, int4, 16)
SDB_VEC2(unsigned, uint2, 8)
SDB_VEC4(unsigned, uint4, 16)
SDB_VEC2(double, double2, 16)
SDB_VEC2(short, short2, 4)
SDB_VEC2(unsigned short, ushort2, 4)
SDB_VEC4(unsigned short, ushort4, 8)
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { uint3 v; v.x = x; v.y = y; v.z = z; return v; }

/* ---- min/max as CUDA's overload set (any arithmetic pair) ---- */
template <class A, class B, class = typename std::enable_if<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>::type>
static inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    return (C)a < (C)b ? (C)a : (C)b;
}
template <class A, class B, class = typename std::enable_if<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>::type>
static inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    return (C)a > (C)b ? (C)a : (C)b;
}

/* ---- math and bit intrinsics ---- */
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
/* glibc declares __expf & co. itself, so these are macros. */
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __log10f(x) log10f(x)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
#define __powf(x, y) powf(x, y)
#define __exp10f(x) powf(10.0f, x)
#define __sincosf(x, s, c) (*(s) = sinf(x), *(c) = cosf(x))
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __saturatef(float x) { return x > 1.0f ? 1.0f : (x >= 0.0f ? x : 0.0f); } /* NaN -> 0 */
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
static inline double __longlong_as_double(long long i) { double f; memcpy(&f, &i, 8); return f; }
static inline long long __double_as_longlong(double f) { long long i; memcpy(&i, &f, 8); return i; }
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline int __float2int_rd(float x) { return (int)floorf(x); }
static inline int __float2int_ru(float x) { return (int)ceilf(x); }
static inline unsigned __float2uint_rn(float x) { return (unsigned)nearbyintf(x); }
static inline float __int2float_rn(int x) { return (float)x; }
static inline float __ll2float_rn(long long x) { return (float)x; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
static inline int __mul24(int a, int b) { return a * b; }
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
template <class T> static inline T __ldg(const T *p) { return *p; }
static inline void __threadfence() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

/* ---- atomics (blocks and fibers never run at the same time: plain RMW) ---- */
#define SDB_ATOMIC_RMW(NAME, T, EXPR) \
    static inline T NAME(T *p, T v) { T old = *p; *p = (EXPR); return old; }
SDB_ATOMIC_RMW(atomicAdd, float, old + v)
SDB_ATOMIC_RMW(atomicAdd, double, old + v)
SDB_ATOMIC_RMW(atomicAdd, int, old + v)
SDB_ATOMIC_RMW(atomicAdd, unsigned, old + v)
SDB_ATOMIC_RMW(atomicAdd, unsigned long long, old + v)
SDB_ATOMIC_RMW(atomicSub, int, old - v)
SDB_ATOMIC_RMW(atomicSub, unsigned, old - v)
SDB_ATOMIC_RMW(atomicMax, int, old > v ? old : v)
SDB_ATOMIC_RMW(atomicMax, unsigned, old > v ? old : v)
SDB_ATOMIC_RMW(atomicMax, long long, old > v ? old : v)
SDB_ATOMIC_RMW(atomicMax, unsigned long long, old > v ? old : v)
SDB_ATOMIC_RMW(atomicMin, int, old < v ? old : v)
SDB_ATOMIC_RMW(atomicMin, unsigned, old < v ? old : v)
SDB_ATOMIC_RMW(atomicMin, long long, old < v ? old : v)
SDB_ATOMIC_RMW(atomicMin, unsigned long long, old < v ? old : v)
SDB_ATOMIC_RMW(atomicExch, int, v)
SDB_ATOMIC_RMW(atomicExch, unsigned, v)
SDB_ATOMIC_RMW(atomicExch, unsigned long long, v)
SDB_ATOMIC_RMW(atomicExch, float, v)
SDB_ATOMIC_RMW(atomicAnd, int, old & v)
SDB_ATOMIC_RMW(atomicAnd, unsigned, old & v)
SDB_ATOMIC_RMW(atomicOr, int, old | v)
SDB_ATOMIC_RMW(atomicOr, unsigned, old | v)
SDB_ATOMIC_RMW(atomicXor, int, old ^ v)
SDB_ATOMIC_RMW(atomicXor, unsigned, old ^ v)
#define SDB_ATOMIC_CAS(T) \
    static inline T atomicCAS(T *p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }
SDB_ATOMIC_CAS(int)
SDB_ATOMIC_CAS(unsigned)
SDB_ATOMIC_CAS(unsigned long long)
SDB_ATOMIC_CAS(unsigned short)
static inline unsigned atomicInc(unsigned *p, unsigned lim) { unsigned o = *p; *p = o >= lim ? 0 : o + 1; return o; }
static inline unsigned atomicDec(unsigned *p, unsigned lim) { unsigned o = *p; *p = (o == 0 || o > lim) ? lim : o - 1; return o; }

/* ---- the scheduler ---- */
namespace sdb_emu {

enum { kReady, kRunning, kWaitBar, kWaitWarp, kDone };
enum { opSync, opShflIdx, opShflUp, opShflDown, opShflXor, opBallot, opAny, opAll, opRedAdd, opRedMin, opRedMax,
       opRedAnd, opRedOr, opRedXor };
static const char *const opNames[] = {"__syncwarp",        "__shfl_sync",       "__shfl_up_sync",
                                      "__shfl_down_sync",  "__shfl_xor_sync",   "__ballot_sync",
                                      "__any_sync",        "__all_sync",        "__reduce_add_sync",
                                      "__reduce_min_sync", "__reduce_max_sync", "__reduce_and_sync",
                                      "__reduce_or_sync",  "__reduce_xor_sync"};

/* Ctx is a saved execution context. */
struct Ctx {
    void *sp; /* saved stack pointer (x86-64) */
#if !SDB_EMU_ASM_SWITCH
    ucontext_t uc;
#endif
};

struct Fiber {
    Ctx ctx;
    uint3 tid;
    int lane, warp;
    int state;
    int line;         /* source line of the barrier it waits at */
    const char *file; /* and its file (#line names) */
    int pred;         /* __syncthreads_count/and/or predicate */
};

/* Warp is one warp's collective state, lane-indexed (kept apart from the
 * fibers so a completing collective touches a few cache lines). */
struct Warp {
    unsigned live, arrived; /* lanes not exited; lanes waiting in a collective */
    unsigned mask[32];
    int op[32], param[32], width[32], line[32];
    uint64_t val[32], res[32];
};

/* Launch is what the stand-in driver hands a module's entry. */
struct Launch {
    unsigned grid[3], block[3];
    unsigned shmem;
    void **params; /* NULL-terminated, as package cuda passes them */
    const char *name;
    char *err;     /* message buffer for a failed launch */
    int errlen;
};

struct Entry {
    const char *name;
    int (*run)(const Launch *);
    int (*nparams)(); /* for stream capture: how many 8-byte slots to keep */
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER; /* one launch at a time per module */
static Fiber *g_fibers;
static int g_cap;          /* fibers allocated */
static char *g_stacks;     /* g_cap stacks of kStack bytes, each above a guard page */
static const size_t kStack = 256 << 10, kGuard = 4096;
static int g_nthreads, g_live, g_barArrived, g_barResult, g_barN, g_nwarps;
static Warp *g_warps;
static Fiber *g_cur;
static int *g_runq;
static int g_qhead, g_qtail;
static Ctx g_sched;              /* the launching thread's own context */
static int g_nextStart, g_stacksUsed; /* threads are started lazily, in order */
static void (*g_thunk)(void *);
static void *g_thunkArg;
static int g_error;
static char g_msg[1024];
static const Launch *g_launch;
static uint3 g_blockIdx, g_blockDim, g_gridDim;
static unsigned char *g_dynSmem;
static size_t g_dynCap;
extern "C" char __start_sdb_shared[], __stop_sdb_shared[]; /* provided by the linker */
static char g_sharedAnchor __attribute__((section("sdb_shared"), used)); /* the section always exists */

} /* namespace sdb_emu */

#define threadIdx (sdb_emu::g_cur->tid)
#define blockIdx (sdb_emu::g_blockIdx)
#define blockDim (sdb_emu::g_blockDim)
#define gridDim (sdb_emu::g_gridDim)
#define warpSize 32

namespace sdb_emu {

#if SDB_EMU_ASM_SWITCH
extern "C" void sdb_emu_swap(void **save, void *to);
__asm__(".text\n"
        ".hidden sdb_emu_swap\n"
        ".globl sdb_emu_swap\n"
        ".type sdb_emu_swap,@function\n"
        "sdb_emu_swap:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
        "  ret\n"
        ".size sdb_emu_swap, .-sdb_emu_swap\n");
static inline void jump(Ctx *from, Ctx *to) { sdb_emu_swap(&from->sp, to->sp); }
#else
static inline void jump(Ctx *from, Ctx *to) { swapcontext(&from->uc, &to->uc); }
#endif

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
    if (g_error) return;
    g_error = 719; /* CUDA_ERROR_LAUNCH_FAILED */
    int n = snprintf(g_msg, sizeof g_msg, "sdb-emu: kernel %s block (%u,%u,%u): ", g_launch->name, g_blockIdx.x,
                     g_blockIdx.y, g_blockIdx.z);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg + n, sizeof g_msg - n, fmt, ap);
    va_end(ap);
}

/* ready queues fiber i; each fiber is queued at most once, so a ring of
 * g_nthreads + 1 slots never overflows. */
static inline void ready(int i) {
    g_fibers[i].state = kReady;
    g_runq[g_qtail] = i;
    if (++g_qtail > g_nthreads) g_qtail = 0;
}

static void fiberMain();
#if !SDB_EMU_ASM_SWITCH
static void fiberMainUC() { fiberMain(); }
#endif

/* identity sets thread i's indices. */
static inline void identity(Fiber *f, int i) {
    unsigned bx = g_blockDim.x, by = g_blockDim.y;
    f->tid.x = i % bx;
    f->tid.y = (i / bx) % by;
    f->tid.z = i / (bx * by);
    f->lane = i & 31;
    f->warp = i >> 5;
    f->state = kRunning;
}

/* pickNext returns the next fiber to switch to, g_cur set: a ready one,
 * else the next thread not started yet (on a fresh stack), else null. */
static Fiber *pickNext() {
    while (g_qhead != g_qtail) {
        Fiber *f = &g_fibers[g_runq[g_qhead]];
        if (++g_qhead > g_nthreads) g_qhead = 0;
        if (f->state != kReady) continue;
        f->state = kRunning;
        return g_cur = f;
    }
    if (g_nextStart >= g_nthreads) return nullptr;
    int i = g_nextStart++, k = g_stacksUsed++;
    Fiber *f = &g_fibers[i];
    identity(f, i);
    /* Stack tops are staggered by k cache lines so that fibers' hot frames
     * do not all fall in the same cache set. */
    char *top = g_stacks + (kStack + kGuard) * (k + 1) - (k % 64) * 64;
#if SDB_EMU_ASM_SWITCH
    void **sp = (void **)top;
    *--sp = nullptr;            /* fake return address of fiberMain */
    *--sp = (void *)&fiberMain; /* where sdb_emu_swap returns to */
    for (int r = 0; r < 6; r++) *--sp = nullptr; /* rbp rbx r12..r15 */
    f->ctx.sp = sp;
#else
    getcontext(&f->ctx.uc);
    f->ctx.uc.uc_stack.ss_sp = g_stacks + (kStack + kGuard) * k + kGuard;
    f->ctx.uc.uc_stack.ss_size = kStack - 1024;
    f->ctx.uc.uc_link = nullptr;
    makecontext(&f->ctx.uc, fiberMainUC, 0);
#endif
    return g_cur = f;
}

/* block suspends the current fiber and runs another directly (or returns
 * to the launching thread when none can run); after a failure it never
 * returns (the block is abandoned). */
static inline void block(Fiber *f) {
    Fiber *n = g_error ? nullptr : pickNext();
    jump(&f->ctx, n ? &n->ctx : &g_sched);
}

/* ---- __syncthreads ---- */
static inline bool sameSite(const Fiber *a, const Fiber *b) {
    return a->line == b->line && (a->file == b->file || !strcmp(a->file, b->file));
}

static void releaseBarrier(Fiber *self) {
    const Fiber *first = nullptr, *other = nullptr;
    int count = 0;
    for (int i = 0; i < g_nthreads; i++) {
        Fiber *f = &g_fibers[i];
        if (f->state != kWaitBar) continue;
        if (!first) first = f;
        else if (!other && !sameSite(f, first)) other = f;
        count += f->pred != 0;
    }
    if (other) {
        fail("divergent __syncthreads: the block's live threads wait at different barriers (thread %d at %s:%d, "
             "thread %d at %s:%d)",
             (int)(first - g_fibers), first->file, first->line, (int)(other - g_fibers), other->file, other->line);
        return;
    }
    g_barResult = count;
    g_barN = g_barArrived;
    g_barArrived = 0;
    for (int i = 0; i < g_nthreads; i++) {
        Fiber *f = &g_fibers[i];
        if (f->state != kWaitBar) continue;
        if (f == self) f->state = kRunning;
        else ready(i);
    }
}

static int syncthreads(const char *file, int line, int pred) {
    Fiber *f = g_cur;
    f->state = kWaitBar;
    f->file = file;
    f->line = line;
    f->pred = pred;
    if (++g_barArrived == g_live) {
        releaseBarrier(f);
        if (g_error) block(f);
        return g_barResult;
    }
    block(f);
    return g_barResult;
}

/* ---- warp collectives ---- */
/* tryComplete finishes the collective of lane l's group if every member
 * has arrived; it returns true when it did (or failed). */
static bool tryComplete(int wi, int l, Fiber *self) {
    Warp &w = g_warps[wi];
    unsigned live = w.live;
    unsigned need = (w.mask[l] | (1u << l)) & live;
    if ((w.arrived & need) != need) return false;
    int op = w.op[l];
    for (unsigned m = need; m; m &= m - 1) {
        int o = __builtin_ctz(m);
        if (w.op[o] != op || ((w.mask[o] | (1u << o)) & live) != need) {
            fail("warp %d: lanes %d and %d meet at different warp collectives (%s mask %#x at line %d, %s mask %#x at "
                 "line %d)",
                 wi, l, o, opNames[op], w.mask[l], w.line[l], opNames[w.op[o]], w.mask[o], w.line[o]);
            return true;
        }
    }
    /* A source lane outside the group (exited, past blockDim, not in the
     * mask) gives the caller its own value. */
#define SDB_SRC(cond, src) ((cond) && ((need >> (src)) & 1) ? w.val[src] : w.val[x])
    switch (op) {
    case opShflIdx:
        for (unsigned m = need; m; m &= m - 1) {
            int x = __builtin_ctz(m), wd = w.width[x], src = (x & ~(wd - 1)) + (w.param[x] & (wd - 1));
            w.res[x] = SDB_SRC(true, src);
        }
        break;
    case opShflUp:
        for (unsigned m = need; m; m &= m - 1) {
            int x = __builtin_ctz(m), wd = w.width[x], d = w.param[x], src = x - d;
            w.res[x] = SDB_SRC(d >= 0 && (x & (wd - 1)) >= d, src);
        }
        break;
    case opShflDown:
        for (unsigned m = need; m; m &= m - 1) {
            int x = __builtin_ctz(m), wd = w.width[x], d = w.param[x], src = x + d;
            w.res[x] = SDB_SRC(d >= 0 && (x & (wd - 1)) + d < wd, src);
        }
        break;
    case opShflXor:
        for (unsigned m = need; m; m &= m - 1) {
            int x = __builtin_ctz(m), wd = w.width[x], src = x ^ w.param[x];
            w.res[x] = SDB_SRC(src >= 0 && src < 32 && (src & ~(wd - 1)) <= (x & ~(wd - 1)), src);
        }
        break;
    case opBallot:
    case opAny:
    case opAll: {
        uint64_t ballot = 0;
        for (unsigned m = need; m; m &= m - 1) {
            int x = __builtin_ctz(m);
            if (w.val[x]) ballot |= 1ull << x;
        }
        uint64_t r = op == opBallot ? ballot : op == opAny ? ballot != 0 : ballot == need;
        for (unsigned m = need; m; m &= m - 1) w.res[__builtin_ctz(m)] = r;
        break;
    }
    case opRedAdd:
    case opRedMin:
    case opRedMax:
    case opRedAnd:
    case opRedOr:
    case opRedXor: { /* 32-bit values; param 1: signed (min/max) */
        int first = __builtin_ctz(need);
        uint32_t r = (uint32_t)w.val[first];
        for (unsigned m = need & (need - 1); m; m &= m - 1) {
            uint32_t v = (uint32_t)w.val[__builtin_ctz(m)];
            switch (op) {
            case opRedAdd: r += v; break;
            case opRedMin: r = w.param[l] ? ((int32_t)v < (int32_t)r ? v : r) : (v < r ? v : r); break;
            case opRedMax: r = w.param[l] ? ((int32_t)v > (int32_t)r ? v : r) : (v > r ? v : r); break;
            case opRedAnd: r &= v; break;
            case opRedOr: r |= v; break;
            default: r ^= v;
            }
        }
        for (unsigned m = need; m; m &= m - 1) w.res[__builtin_ctz(m)] = r;
        break;
    }
    default:
        break;
    }
#undef SDB_SRC
    w.arrived &= ~need;
    Fiber *base = &g_fibers[wi * 32];
    for (unsigned m = need; m; m &= m - 1) {
        int x = __builtin_ctz(m);
        if (&base[x] == self) self->state = kRunning;
        else ready(wi * 32 + x);
    }
    return true;
}

static uint64_t collective(int op, unsigned mask, uint64_t val, int param, int width, int line) {
    Fiber *f = g_cur;
    if (width <= 0 || width > 32 || (width & (width - 1))) {
        fail("%s at line %d: width %d is not a power of two in 1..32", opNames[op], line, width);
        block(f);
    }
    Warp &w = g_warps[f->warp];
    int l = f->lane;
    f->state = kWaitWarp;
    w.op[l] = op;
    w.mask[l] = mask;
    w.val[l] = val;
    w.param[l] = param;
    w.width[l] = width;
    w.line[l] = line;
    w.arrived |= 1u << l;
    if (tryComplete(f->warp, l, f)) {
        if (g_error) block(f);
    } else {
        block(f);
    }
    return g_warps[f->warp].res[l];
}

template <class T> static inline uint64_t bitsOf(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp shuffle of a type over 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof v);
    return u;
}
template <class T> static inline T fromBits(uint64_t u) {
    T v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* ---- fibers ---- */
/* exitFiber does the bookkeeping of a returned thread: a lane that leaves
 * can complete its warp's collectives, and the last thread not yet at the
 * block barrier can release it. */
static void exitFiber(Fiber *f) {
    f->state = kDone;
    g_live--;
    Warp &w = g_warps[f->warp];
    w.live &= ~(1u << f->lane);
    for (unsigned m = w.arrived; m && !g_error; m &= m - 1) {
        int l = __builtin_ctz(m);
        if (w.arrived & (1u << l)) tryComplete(f->warp, l, nullptr);
    }
    if (!g_error && g_live > 0 && g_barArrived == g_live) releaseBarrier(nullptr);
}

/* fiberMain runs threads on one stack: when a thread returns, the next
 * thread not started yet reuses the stack at once (so kernels without
 * barriers or collectives never switch); when there is none, it moves on
 * to a ready fiber for good. */
static void fiberMain() {
    for (;;) {
        g_thunk(g_thunkArg);
        exitFiber(g_cur);
        if (!g_error && g_nextStart < g_nthreads) {
            int i = g_nextStart++;
            identity(&g_fibers[i], i);
            g_cur = &g_fibers[i];
            continue;
        }
        Ctx dead;
        Fiber *n = g_error ? nullptr : pickNext();
        jump(&dead, n ? &n->ctx : &g_sched);
    }
}

static bool reserve(int n) {
    if (n <= g_cap) return true;
    size_t per = kStack + kGuard;
    char *st = (char *)mmap(nullptr, per * n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (st == MAP_FAILED) return false;
    for (int i = 0; i < n; i++) mprotect(st + per * i, kGuard, PROT_NONE);
    if (g_stacks) munmap(g_stacks, per * g_cap);
    free(g_fibers);
    free(g_runq);
    free(g_warps);
    g_stacks = st;
    g_fibers = (Fiber *)calloc(n, sizeof(Fiber));
    g_runq = (int *)calloc(n + 1, sizeof(int));
    g_warps = (Warp *)calloc((n + 31) / 32, sizeof(Warp));
    g_cap = n;
    return true;
}

/* release gives the fibers' memory back when the module is unloaded. */
__attribute__((destructor)) static void release() {
    if (g_stacks) munmap(g_stacks, (kStack + kGuard) * g_cap);
    free(g_fibers);
    free(g_runq);
    free(g_warps);
    free(g_dynSmem);
    g_stacks = nullptr;
    g_fibers = nullptr;
    g_runq = nullptr;
    g_warps = nullptr;
    g_dynSmem = nullptr;
    g_cap = 0;
    g_dynCap = 0;
}

static void describeDeadlock() {
    int bar = 0, warp = 0, barLine = -1;
    const Fiber *w = nullptr;
    for (int i = 0; i < g_nthreads; i++) {
        const Fiber *f = &g_fibers[i];
        if (f->state == kWaitBar) {
            bar++;
            barLine = f->line;
        } else if (f->state == kWaitWarp) {
            warp++;
            if (!w) w = f;
        }
    }
    if (w) {
        const Warp &wp = g_warps[w->warp];
        int l = w->lane;
        unsigned need = (wp.mask[l] | (1u << l)) & wp.live, missing = need & ~wp.arrived;
        fail("deadlock: %d live threads, %d at __syncthreads (line %d), %d at warp collectives; warp %d lane %d waits in "
             "%s (line %d, mask %#x) for lanes %#x that never arrive",
             g_live, bar, barLine, warp, w->warp, l, opNames[wp.op[l]], wp.line[l], wp.mask[l], missing);
    } else {
        fail("deadlock: %d live threads, %d waiting at __syncthreads (line %d)", g_live, bar, barLine);
    }
}

static int runBlock() {
    int n = g_nthreads;
    g_qhead = g_qtail = 0;
    g_live = n;
    g_barArrived = 0;
    g_nextStart = g_stacksUsed = 0;
    g_nwarps = (n + 31) / 32;
    for (int w = 0; w < g_nwarps; w++) {
        int lanes = n - w * 32 < 32 ? n - w * 32 : 32;
        g_warps[w].live = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
        g_warps[w].arrived = 0;
    }
    /* Fibers switch among themselves; control comes back here only when
     * none can run (all done, a deadlock) or after a failure. */
    while (Fiber *f = pickNext()) {
        jump(&g_sched, &f->ctx);
        if (g_error) return g_error;
    }
    if (g_live > 0) {
        describeDeadlock();
        return g_error;
    }
    return 0;
}

static int runGrid(const Launch *L, void (*thunk)(void *), void *arg) {
    unsigned bx = L->block[0], by = L->block[1], bz = L->block[2];
    unsigned long long nt = (unsigned long long)bx * by * bz;
    if (nt == 0 || nt > 1024 || bz > 64 || L->grid[0] == 0 || L->grid[1] == 0 || L->grid[2] == 0 ||
        L->grid[1] > 65535 || L->grid[2] > 65535) {
        snprintf(L->err, L->errlen, "sdb-emu: kernel %s: invalid launch grid (%u,%u,%u) x block (%u,%u,%u)", L->name,
                 L->grid[0], L->grid[1], L->grid[2], bx, by, bz);
        return 1; /* CUDA_ERROR_INVALID_VALUE */
    }
    if (L->shmem > 227u * 1024) {
        snprintf(L->err, L->errlen, "sdb-emu: kernel %s: %u bytes of dynamic shared memory (max 227 KiB)", L->name,
                 L->shmem);
        return 1;
    }
    pthread_mutex_lock(&g_mu);
    int rc = 0;
    if (!reserve((int)nt) || (L->shmem > g_dynCap && !(g_dynSmem = (unsigned char *)realloc(g_dynSmem, L->shmem)))) {
        snprintf(L->err, L->errlen, "sdb-emu: kernel %s: out of host memory for %llu fibers", L->name, nt);
        pthread_mutex_unlock(&g_mu);
        return 2; /* CUDA_ERROR_OUT_OF_MEMORY */
    }
    if (L->shmem > g_dynCap) g_dynCap = L->shmem;
    g_launch = L;
    g_thunk = thunk;
    g_thunkArg = arg;
    g_error = 0;
    g_nthreads = (int)nt;
    g_blockDim = make_uint3(bx, by, bz);
    g_gridDim = make_uint3(L->grid[0], L->grid[1], L->grid[2]);
    for (unsigned z = 0; z < L->grid[2] && !rc; z++)
        for (unsigned y = 0; y < L->grid[1] && !rc; y++)
            for (unsigned x = 0; x < L->grid[0] && !rc; x++) {
                g_blockIdx = make_uint3(x, y, z);
                if (L->shmem) memset(g_dynSmem, 0xff, L->shmem);
                memset(__start_sdb_shared, 0xff, __stop_sdb_shared - __start_sdb_shared);
                rc = runBlock();
            }
    if (rc) {
        snprintf(L->err, L->errlen, "%s", g_msg);
        fprintf(stderr, "%s\n", g_msg);
    }
    g_cur = nullptr;
    pthread_mutex_unlock(&g_mu);
    return rc;
}

/* runKernel unpacks the launch's parameter slots into f's argument types
 * and runs the grid. */
template <class... A, size_t... I>
static int runKernelIdx(void (*f)(A...), const Launch *L, std::index_sequence<I...>) {
    const int n = sizeof...(A);
    for (int i = 0; i < n; i++)
        if (!L->params || !L->params[i]) {
            snprintf(L->err, L->errlen, "sdb-emu: kernel %s takes %d parameters, the launch passed %d", L->name, n, i);
            return 1;
        }
    if (L->params && L->params[n]) {
        int m = n;
        while (m < 4096 && L->params[m]) m++;
        snprintf(L->err, L->errlen, "sdb-emu: kernel %s takes %d parameters, the launch passed %d", L->name, n, m);
        return 1;
    }
    typedef std::tuple<typename std::decay<A>::type...> Args;
    Args args(*(typename std::decay<A>::type *)L->params[I]...);
    struct Ctx {
        void (*f)(A...);
        Args *a;
    } ctx = {f, &args};
    return runGrid(L, [](void *c) { Ctx *x = (Ctx *)c; std::apply(x->f, *x->a); }, &ctx);
}

template <class... A> static int runKernel(void (*f)(A...), const Launch *L) {
    return runKernelIdx(f, L, std::index_sequence_for<A...>());
}

template <class... A> static int nparamsOf(void (*)(A...)) { return (int)sizeof...(A); }

} /* namespace sdb_emu */

/* sdb_emu_where describes, for the stand-in driver's fault handler, where
 * this module's running launch is (kernel, block, thread) and whether addr
 * lies in a fiber stack's guard page. Not async-signal-safe (snprintf); it
 * only runs on the way to a crash. */
extern "C" __attribute__((visibility("default"))) int sdb_emu_where(const void *addr, char *buf, int len) {
    using namespace sdb_emu;
    if (!g_launch || !g_cur) return 0;
    const char *why = "";
    size_t per = kStack + kGuard;
    if (g_stacks && (const char *)addr >= g_stacks && (const char *)addr < g_stacks + per * g_cap &&
        (size_t)((const char *)addr - g_stacks) % per < kGuard)
        why = " (a fiber stack overflow: each emulated thread has 256 KiB)";
    return snprintf(buf, len, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u)%s", g_launch->name, g_blockIdx.x,
                    g_blockIdx.y, g_blockIdx.z, g_cur->tid.x, g_cur->tid.y, g_cur->tid.z, why);
}

namespace sdb_emu {

} /* namespace sdb_emu */

/* ---- CUDA built-in functions ---- */
#define __syncthreads() ((void)sdb_emu::syncthreads(__FILE__, __LINE__, 0))
#define __syncthreads_count(p) (sdb_emu::syncthreads(__FILE__, __LINE__, (p) != 0))
#define __syncthreads_or(p) (sdb_emu::syncthreads(__FILE__, __LINE__, (p) != 0) != 0)
#define __syncthreads_and(p) (sdb_emu::syncthreads(__FILE__, __LINE__, (p) != 0) == sdb_emu::g_barN)
#define __shfl_sync(m, v, s, ...) sdb_emu::shfl_(sdb_emu::opShflIdx, __LINE__, m, v, s, ##__VA_ARGS__)
#define __shfl_up_sync(m, v, s, ...) sdb_emu::shfl_(sdb_emu::opShflUp, __LINE__, m, v, s, ##__VA_ARGS__)
#define __shfl_down_sync(m, v, s, ...) sdb_emu::shfl_(sdb_emu::opShflDown, __LINE__, m, v, s, ##__VA_ARGS__)
#define __shfl_xor_sync(m, v, s, ...) sdb_emu::shfl_(sdb_emu::opShflXor, __LINE__, m, v, s, ##__VA_ARGS__)
#define __ballot_sync(m, p) ((unsigned)sdb_emu::collective(sdb_emu::opBallot, m, (p) != 0, 0, 32, __LINE__))
#define __any_sync(m, p) ((int)sdb_emu::collective(sdb_emu::opAny, m, (p) != 0, 0, 32, __LINE__))
#define __all_sync(m, p) ((int)sdb_emu::collective(sdb_emu::opAll, m, (p) != 0, 0, 32, __LINE__))
#define __activemask() (sdb_emu::g_warps[sdb_emu::g_cur->warp].live)
#define __trap() sdb_emu::trap_(__LINE__)
#define __nanosleep(ns) ((void)(ns), sdb_emu::yield_())

namespace sdb_emu {
template <class T> static inline T shfl_(int op, int line, unsigned mask, T v, int s, int width = 32) {
    return fromBits<T>(collective(op, mask, bitsOf(v), s, width, line));
}
/* yield_ lets the other threads of the block run (for spin-waits). */
static inline void yield_() {
    Fiber *f = g_cur;
    if (g_qhead == g_qtail && g_nextStart >= g_nthreads) return;
    ready((int)(f - g_fibers));
    Fiber *n = pickNext();
    if (n != f) jump(&f->ctx, &n->ctx);
}
static inline void trap_(int line) {
    fail("__trap() at line %d", line);
    block(g_cur);
}
} /* namespace sdb_emu */

/* clock64 counts CPU cycles (x86-64) or nanoseconds: only differences mean anything. */
static inline long long clock64() {
#if defined(__x86_64__)
    return (long long)__builtin_ia32_rdtsc();
#else
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
#endif
}

static inline void __syncwarp(unsigned mask = 0xffffffffu, int line = __builtin_LINE()) {
    sdb_emu::collective(sdb_emu::opSync, mask, 0, 0, 32, line);
}

/* __reduce_*_sync (sm_80+): 32-bit integer reductions over the group. */
#define SDB_REDUCE(NAME, OP)                                                                                       \
    static inline unsigned NAME(unsigned mask, unsigned v, int line = __builtin_LINE()) {                      \
        return (unsigned)sdb_emu::collective(sdb_emu::OP, mask, v, 0, 32, line);                                 \
    }                                                                                                              \
    static inline int NAME(unsigned mask, int v, int line = __builtin_LINE()) {                                \
        return (int)(unsigned)sdb_emu::collective(sdb_emu::OP, mask, (uint32_t)v, 1, 32, line);                  \
    }
SDB_REDUCE(__reduce_add_sync, opRedAdd)
SDB_REDUCE(__reduce_min_sync, opRedMin)
SDB_REDUCE(__reduce_max_sync, opRedMax)
#undef SDB_REDUCE
static inline unsigned __reduce_and_sync(unsigned mask, unsigned v, int line = __builtin_LINE()) {
    return (unsigned)sdb_emu::collective(sdb_emu::opRedAnd, mask, v, 0, 32, line);
}
static inline unsigned __reduce_or_sync(unsigned mask, unsigned v, int line = __builtin_LINE()) {
    return (unsigned)sdb_emu::collective(sdb_emu::opRedOr, mask, v, 0, 32, line);
}
static inline unsigned __reduce_xor_sync(unsigned mask, unsigned v, int line = __builtin_LINE()) {
    return (unsigned)sdb_emu::collective(sdb_emu::opRedXor, mask, v, 0, 32, line);
}

#endif /* SDB_EMU_RUNTIME_H */
