// emu_test.go: the CUDA C emulator (stand-in NVRTC + driver) checked through
// package cuda's API with kernels written here: thread and block indices
// of a 3-D block, a block reduction with shuffles and __syncthreads,
// bit-exact shuffles of 4- and 8-byte values with widths, half-warp masks,
// ballots and __syncthreads_count/and/or, dynamic shared memory, per-block
// (and poisoned) static shared memory, atomics, early exits before a
// barrier and before a shuffle, kernels compiled out with #ifndef SDB_EMU,
// prelude's mma_m16n8k16 against an exact reference product, the failures
// that must be reported instead of hanging (divergent barrier, a shuffle
// waiting for lanes stuck at a barrier, lanes at different collectives,
// __trap, wrong parameter counts), and the crashes that must name the
// kernel (bad pointer, endless loop). The timing subtest logs the cost of
// a switch. It does not cover the embedded kernels (their own tests do).
package cudatest_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
)

const emuSrc = `
extern "C" __global__ void ids(int* out) {
    int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    int n = blockDim.x * blockDim.y * blockDim.z;
    int* o = out + 4 * (b * n + t);
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z; o[3] = blockIdx.x + 100 * blockIdx.y;
}

__device__ float emu_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// one block per row: out[row] = sum(x[row, :n])
extern "C" __global__ void __launch_bounds__(256) row_sum(const float* __restrict__ x, float* out, int n) {
    __shared__ float part[32];
    const float* r = x + (long long)blockIdx.x * n;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += r[i];
    s = emu_warp_sum(s);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) part[w] = s;
    __syncthreads();
    if (w == 0) {
        s = lane < (int)((blockDim.x + 31) / 32) ? part[lane] : 0.0f;
        s = emu_warp_sum(s);
        if (lane == 0) out[blockIdx.x] = s;
    }
}

// out[op][width][lane] for op in idx, up, down, xor and widths 32, 16, 8.
extern "C" __global__ void shuffles(const float* in, float* out, const double* din, double* dout, int param) {
    int l = threadIdx.x;
    float v = in[l];
    double d = din[l];
    int widths[3] = {32, 16, 8};
    for (int k = 0; k < 3; k++) {
        int w = widths[k];
        out[(0 * 3 + k) * 32 + l] = __shfl_sync(0xffffffffu, v, param, w);
        out[(1 * 3 + k) * 32 + l] = __shfl_up_sync(0xffffffffu, v, param, w);
        out[(2 * 3 + k) * 32 + l] = __shfl_down_sync(0xffffffffu, v, param, w);
        out[(3 * 3 + k) * 32 + l] = __shfl_xor_sync(0xffffffffu, v, param, w);
        dout[(0 * 3 + k) * 32 + l] = __shfl_sync(0xffffffffu, d, param, w);
        dout[(3 * 3 + k) * 32 + l] = __shfl_xor_sync(0xffffffffu, d, param, w);
    }
}

extern "C" __global__ void votes(const int* pred, unsigned* out) {
    int p = pred[threadIdx.x];
    unsigned b = __ballot_sync(0xffffffffu, p);
    int a = __any_sync(0xffffffffu, p), al = __all_sync(0xffffffffu, p);
    int cnt = __syncthreads_count(p);
    if (threadIdx.x % 32 == 0) {
        int w = threadIdx.x / 32;
        out[4 * w] = b; out[4 * w + 1] = a; out[4 * w + 2] = al; out[4 * w + 3] = cnt;
    }
}

// Thread 0 spin-waits (with __nanosleep, which lets the block's other
// threads run) for a flag thread 63 sets.
extern "C" __global__ void spin_flag(int* out) {
    __shared__ volatile int flag;
    if (threadIdx.x == 0) flag = 0;
    __syncthreads();
    long long t0 = clock64();
    if (threadIdx.x == 0) {
        while (flag == 0) __nanosleep(100);
        out[0] = flag;
        out[1] = clock64() >= t0;
    } else if (threadIdx.x == 63) {
        flag = 7;
    }
}

// Integer warp reductions (sm_80+ built-ins), signed and unsigned.
extern "C" __global__ void reduces(const int* x, int* out) {
    int v = x[threadIdx.x];
    int r[7] = {__reduce_add_sync(0xffffffffu, v), __reduce_min_sync(0xffffffffu, v), __reduce_max_sync(0xffffffffu, v),
                (int)__reduce_min_sync(0xffffffffu, (unsigned)v), (int)__reduce_and_sync(0xffffffffu, (unsigned)v),
                (int)__reduce_or_sync(0xffffffffu, (unsigned)v), (int)__reduce_xor_sync(0xffffffffu, (unsigned)v)};
    if ((threadIdx.x & 31) == 0)
        for (int i = 0; i < 7; i++) out[(threadIdx.x >> 5) * 7 + i] = r[i];
}

// Each block reverses its chunk of x through dynamic shared memory.
extern "C" __global__ void reverse_dyn(const float* x, float* y) {
    extern __shared__ __align__(16) float buf[];
    int n = blockDim.x;
    const float* xb = x + (long long)blockIdx.x * n;
    buf[threadIdx.x] = xb[threadIdx.x];
    __syncthreads();
    y[(long long)blockIdx.x * n + threadIdx.x] = buf[n - 1 - threadIdx.x];
}

// Static shared memory is per block: each block's threads see only their
// block's value, and a block starts with it poisoned (0xff bytes), not
// holding the previous block's values.
extern "C" __global__ void shared_per_block(int* out, int* first) {
    __shared__ int tag;
    if (threadIdx.x == 0) { first[blockIdx.x] = tag; tag = blockIdx.x * 7 + 1; }
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = tag;
}

extern "C" __global__ void atomics(const int* x, int n, int* hist, int* mx, unsigned* cas, float* fsum) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        atomicAdd(&hist[x[i] & 7], 1);
        atomicMax(mx, x[i]);
        atomicAdd(fsum, 1.0f);
        unsigned old = *cas, assumed;
        do { assumed = old; old = atomicCAS(cas, assumed, assumed + 1u); } while (old != assumed);
    }
}

// Threads past n return before the barrier; the others still meet there.
extern "C" __global__ void early_exit(float* y, int n) {
    __shared__ float s[256];
    if ((int)threadIdx.x >= n) return;
    s[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    y[threadIdx.x] = s[n - 1 - threadIdx.x];
}

// Lanes 16..31 exit; the rest shuffle with a full mask (exited lanes do not take part).
extern "C" __global__ void exited_lanes(float* y) {
    if (threadIdx.x >= 16) return;
    float v = (float)threadIdx.x;
    y[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 1) + 100.0f * __shfl_xor_sync(0xffffffffu, v, 16);
}

// Half-warps shuffle among themselves with their own masks; __syncwarp and
// __syncthreads_and/or in between.
extern "C" __global__ void half_warps(const float* x, float* y, int* flags) {
    int l = threadIdx.x;
    float v = x[l];
    unsigned m = l < 16 ? 0x0000ffffu : 0xffff0000u;
    float s = v;
    for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(m, s, o);
    __syncwarp();
    float first = __shfl_sync(m, v, 0, 16);
    y[l] = s + 1000.0f * first;
    int all = __syncthreads_and(v > -1000.0f), any = __syncthreads_or(v > 1e30f);
    if (l == 0) { flags[0] = all; flags[1] = any; }
}

// Lanes of one warp meet at different kinds of collective.
extern "C" __global__ void mixed_collectives(float* y) {
    float v = 1.0f;
    if (threadIdx.x & 1) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else v = (float)__ballot_sync(0xffffffffu, 1);
    y[threadIdx.x] = v;
}

// Costs of the emulator's switches (logged by the timing subtest).
extern "C" __global__ void bench_shfl(float* y, int iters) {
    float v = (float)threadIdx.x;
    for (int i = 0; i < iters; i++) v = __shfl_xor_sync(0xffffffffu, v, 1);
    y[blockIdx.x * blockDim.x + threadIdx.x] = v;
}
extern "C" __global__ void bench_sync(float* y, int iters) {
    __shared__ float s[1024];
    float v = 0.0f;
    for (int i = 0; i < iters; i++) {
        s[threadIdx.x] = (float)i;
        __syncthreads();
        v += s[(threadIdx.x + 1) % blockDim.x];
        __syncthreads();
    }
    y[blockIdx.x * blockDim.x + threadIdx.x] = v;
}
extern "C" __global__ void bench_plain(float* y) {
    y[blockIdx.x * blockDim.x + threadIdx.x] = (float)threadIdx.x;
}

#ifndef SDB_EMU
extern "C" __global__ void gpu_only(float* y) { asm volatile("trap;"); }
#elif 0
extern "C" __global__ void never(float* y) { y[0] = 0.0f; }
#else
extern "C" __global__ void emu_only(float* y) { y[0] = 42.0f; }
#endif

extern "C" __global__ void divergent(float* y) {
    if (threadIdx.x < 16) { y[threadIdx.x] = 1.0f; __syncthreads(); }
    else { y[threadIdx.x] = 2.0f; __syncthreads(); }
}

extern "C" __global__ void stuck_shuffle(float* y) {
    float v = 1.0f;
    if (threadIdx.x == 0) v = __shfl_sync(0xffffffffu, v, 1);
    __syncthreads();
    y[threadIdx.x] = v;
}

extern "C" __global__ void traps(float* y) {
    if (threadIdx.x == 3) __trap();
    y[threadIdx.x] = 1.0f;
}

// d [16, 8] = a [16, 16] (half) * b [16, 8] (half) + c [16, 8], one warp,
// fragments in the PTX m16n8k16 layout.
extern "C" __global__ void mma_check(const half_t* a, const half_t* b, const float* c, float* d) {
    int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    unsigned af[4], bf[2];
    float cf[4], df[4];
    for (int r = 0; r < 4; r++) {
        int row = g + ((r & 1) ? 8 : 0), col = 2 * t + ((r & 2) ? 8 : 0);
        af[r] = (unsigned)a[row * 16 + col] | ((unsigned)a[row * 16 + col + 1] << 16);
    }
    for (int r = 0; r < 2; r++) {
        int k = 2 * t + (r ? 8 : 0);
        bf[r] = (unsigned)b[k * 8 + g] | ((unsigned)b[(k + 1) * 8 + g] << 16);
    }
    for (int i = 0; i < 4; i++) cf[i] = c[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)];
    mma_m16n8k16(df, af, bf, cf);
    for (int i = 0; i < 4; i++) d[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = df[i];
}
`

func TestEmulator(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	out := cudatest.RunChild(t, "TestEmulatorChild", cudatest.Build(t))
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "ns per thread") {
			t.Log(strings.TrimSpace(l))
		}
	}
}

// emu is the child's device with the test module loaded.
type emu struct {
	t *testing.T
	d *cuda.Device
	m *cuda.Module
}

func (e *emu) fn(name string) *cuda.Function {
	e.t.Helper()
	f, err := e.m.Function(name)
	if err != nil {
		e.t.Fatal(err)
	}
	return f
}

func (e *emu) buf(n int) *cuda.Buffer {
	e.t.Helper()
	b, err := e.d.Alloc(n)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { b.Free() })
	return b
}

func (e *emu) f32(x []float32) *cuda.Buffer {
	e.t.Helper()
	b := e.buf(4 * len(x))
	if err := b.UploadFloat32(x); err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *emu) bytes(b []byte) *cuda.Buffer {
	e.t.Helper()
	d := e.buf(len(b))
	if err := d.UploadBytes(b); err != nil {
		e.t.Fatal(err)
	}
	return d
}

func (e *emu) down(b *cuda.Buffer, n int) []byte {
	e.t.Helper()
	out := make([]byte, n)
	if err := b.DownloadBytes(out); err != nil {
		e.t.Fatal(err)
	}
	return out
}

func u32s(b []byte) []uint32 {
	out := make([]uint32, len(b)/4)
	for i := range out {
		out[i] = uint32(b[4*i]) | uint32(b[4*i+1])<<8 | uint32(b[4*i+2])<<16 | uint32(b[4*i+3])<<24
	}
	return out
}

func le32(v []uint32) []byte {
	out := make([]byte, 4*len(v))
	for i, x := range v {
		out[4*i], out[4*i+1], out[4*i+2], out[4*i+3] = byte(x), byte(x>>8), byte(x>>16), byte(x>>24)
	}
	return out
}

func le64(v []uint64) []byte {
	out := make([]byte, 8*len(v))
	for i, x := range v {
		for k := 0; k < 8; k++ {
			out[8*i+k] = byte(x >> (8 * k))
		}
	}
	return out
}

func u64s(b []byte) []uint64 {
	out := make([]uint64, len(b)/8)
	for i := range out {
		for k := 0; k < 8; k++ {
			out[i] |= uint64(b[8*i+k]) << (8 * k)
		}
	}
	return out
}

func TestEmulatorChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestEmulator")
	}
	d, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	m, err := d.CompileModule("emu_test.cu", "#line 1 \"prelude.cuh\"\n"+cuda.KernelPrelude()+"\n#line 1 \"emu_test.cu\"\n"+emuSrc)
	if err != nil {
		t.Fatal(err)
	}
	e := &emu{t: t, d: d, m: m}
	rng := rand.New(rand.NewPCG(7, 8))

	t.Run("ids-3d-block", func(t *testing.T) {
		e.t = t
		bx, by, bz, gx, gy := 8, 4, 2, 3, 2
		n := bx * by * bz * gx * gy
		out := e.buf(16 * n)
		if err := e.fn("ids").Launch(cuda.Dim3{X: uint32(gx), Y: uint32(gy)}, cuda.Dim3{X: uint32(bx), Y: uint32(by), Z: uint32(bz)}, 0, out); err != nil {
			t.Fatal(err)
		}
		got := u32s(e.down(out, 16*n))
		i := 0
		for b := 0; b < gx*gy; b++ {
			for tz := 0; tz < bz; tz++ {
				for ty := 0; ty < by; ty++ {
					for tx := 0; tx < bx; tx++ {
						want := []uint32{uint32(tx), uint32(ty), uint32(tz), uint32(b%gx + 100*(b/gx))}
						for k := range want {
							if got[4*i+k] != want[k] {
								t.Fatalf("thread %d (block %d): got %v, want %v", i, b, got[4*i:4*i+4], want)
							}
						}
						i++
					}
				}
			}
		}
	})

	t.Run("block-reduction", func(t *testing.T) {
		e.t = t
		for _, tc := range []struct {
			name         string
			rows, n, blk int
		}{
			{"full-warps", 5, 1000, 256},
			{"partial-warp", 3, 77, 96},
			{"one-warp", 2, 40, 32},
			{"many-rows", 40, 300, 128},
		} {
			t.Run(tc.name, func(t *testing.T) {
				x := make([]float32, tc.rows*tc.n) // small integers: every order sums exactly
				want := make([]float32, tc.rows)
				for i := range x {
					x[i] = float32(rng.IntN(17) - 8)
					want[i/tc.n] += x[i]
				}
				out := e.buf(4 * tc.rows)
				if err := e.fn("row_sum").Launch(cuda.Dim3{X: uint32(tc.rows)}, cuda.Dim3{X: uint32(tc.blk)}, 0, e.f32(x), out, tc.n); err != nil {
					t.Fatal(err)
				}
				got := make([]float32, tc.rows)
				out.DownloadFloat32(got)
				for i := range want {
					if got[i] != want[i] {
						t.Fatalf("row sums %v, want %v", got, want)
					}
				}
			})
		}
	})

	t.Run("shuffles-bit-exact", func(t *testing.T) {
		e.t = t
		in := make([]uint32, 32)
		din := make([]uint64, 32)
		for i := range in {
			in[i] = rng.Uint32() // any bits, NaN payloads and denormals included
			din[i] = rng.Uint64()
		}
		in[3] = 0x7fa00001 // a signalling NaN must cross unchanged
		for _, param := range []int{0, 1, 5, 17} {
			out, dout := e.buf(4*12*32), e.buf(8*12*32)
			if err := e.fn("shuffles").Launch(cuda.Dim3{X: 1}, cuda.Dim3{X: 32}, 0, e.bytes(le32(in)), out, e.bytes(le64(din)), dout, param); err != nil {
				t.Fatal(err)
			}
			got, dgot := u32s(e.down(out, 4*12*32)), u64s(e.down(dout, 8*12*32))
			for k, w := range []int{32, 16, 8} {
				for l := 0; l < 32; l++ {
					seg := l &^ (w - 1)
					src := [4]int{seg + param&(w-1), l - param, l + param, l ^ param}
					if l-seg < param {
						src[1] = l
					}
					if l-seg+param >= w {
						src[2] = l
					}
					if src[3]&^(w-1) > seg || src[3] > 31 {
						src[3] = l
					}
					for op := 0; op < 4; op++ {
						if g := got[(op*3+k)*32+l]; g != in[src[op]] {
							t.Fatalf("param %d width %d lane %d op %d: got %#x, want lane %d's %#x", param, w, l, op, g, src[op], in[src[op]])
						}
					}
					for _, op := range []int{0, 3} {
						if g := dgot[(op*3+k)*32+l]; g != din[src[op]] {
							t.Fatalf("double: param %d width %d lane %d op %d: got %#x, want %#x", param, w, l, op, g, din[src[op]])
						}
					}
				}
			}
		}
	})

	t.Run("votes", func(t *testing.T) {
		e.t = t
		pred := make([]uint32, 64)
		var ballot [2]uint32
		count := 0
		for i := range pred {
			if i < 32 || rng.IntN(3) == 0 {
				pred[i] = uint32(rng.IntN(5) + 1)
				ballot[i/32] |= 1 << (i % 32)
				count++
			}
		}
		out := e.buf(4 * 8)
		if err := e.fn("votes").Launch(cuda.Dim3{X: 1}, cuda.Dim3{X: 64}, 0, e.bytes(le32(pred)), out); err != nil {
			t.Fatal(err)
		}
		got := u32s(e.down(out, 32))
		all1 := uint32(0)
		if ballot[1] == 0xffffffff {
			all1 = 1
		}
		any1 := uint32(0)
		if ballot[1] != 0 {
			any1 = 1
		}
		want := []uint32{ballot[0], 1, 1, uint32(count), ballot[1], any1, all1, uint32(count)}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("ballot/any/all/count = %v, want %v", got, want)
			}
		}
	})

	t.Run("spin-wait-with-nanosleep", func(t *testing.T) {
		e.t = t
		out := e.buf(8)
		if err := e.fn("spin_flag").Launch(cuda.Dim3{X: 1}, cuda.Dim3{X: 64}, 0, out); err != nil {
			t.Fatal(err)
		}
		if got := u32s(e.down(out, 8)); got[0] != 7 || got[1] != 1 {
			t.Fatalf("flag, clock64 monotonic = %v, want [7 1]", got)
		}
	})

	t.Run("integer-reductions", func(t *testing.T) {
		e.t = t
		x := make([]uint32, 64)
		var want []uint32
		for w := 0; w < 2; w++ {
			add, and, or, xor := int32(0), ^uint32(0), uint32(0), uint32(0)
			mn, mx, umn := int32(math.MaxInt32), int32(math.MinInt32), ^uint32(0)
			for l := 0; l < 32; l++ {
				v := int32(rng.IntN(2001) - 1000)
				x[32*w+l] = uint32(v)
				add += v
				mn, mx, umn = min(mn, v), max(mx, v), min(umn, uint32(v))
				and, or, xor = and&uint32(v), or|uint32(v), xor^uint32(v)
			}
			want = append(want, uint32(add), uint32(mn), uint32(mx), umn, and, or, xor)
		}
		out := e.buf(4 * 14)
		if err := e.fn("reduces").Launch(cuda.Dim3{X: 1}, cuda.Dim3{X: 64}, 0, e.bytes(le32(x)), out); err != nil {
			t.Fatal(err)
		}
		got := u32s(e.down(out, 4*14))
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("warp %d: add/min/max/umin/and/or/xor = %v, want %v", i/7, got[i/7*7:i/7*7+7], want[i/7*7:i/7*7+7])
			}
		}
	})

	t.Run("dynamic-shared", func(t *testing.T) {
		e.t = t
		const blocks, n = 3, 200
		x := make([]float32, blocks*n)
		for i := range x {
			x[i] = float32(i)
		}
		y := e.buf(4 * len(x))
		if err := e.fn("reverse_dyn").Launch(cuda.Dim3{X: blocks}, cuda.Dim3{X: n}, 4*n, e.f32(x), y); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, len(x))
		y.DownloadFloat32(got)
		for b := 0; b < blocks; b++ {
			for i := 0; i < n; i++ {
				if got[b*n+i] != x[b*n+n-1-i] {
					t.Fatalf("block %d element %d = %v, want %v", b, i, got[b*n+i], x[b*n+n-1-i])
				}
			}
		}
	})

	t.Run("static-shared-per-block", func(t *testing.T) {
		e.t = t
		out, first := e.buf(4*5*64), e.buf(4*5)
		if err := e.fn("shared_per_block").Launch(cuda.Dim3{X: 5}, cuda.Dim3{X: 64}, 0, out, first); err != nil {
			t.Fatal(err)
		}
		for b, v := range u32s(e.down(first, 4*5)) {
			if v != 0xffffffff {
				t.Fatalf("block %d found tag %#x before writing it, want the poison 0xffffffff", b, v)
			}
		}
		got := u32s(e.down(out, 4*5*64))
		for i, v := range got {
			if v != uint32(i/64*7+1) {
				t.Fatalf("thread %d saw tag %d, want its block's %d", i, v, i/64*7+1)
			}
		}
	})

	t.Run("atomics", func(t *testing.T) {
		e.t = t
		const n = 3000
		x := make([]uint32, n)
		var hist [8]uint32
		mx := uint32(0)
		for i := range x {
			x[i] = uint32(rng.IntN(100000))
			hist[x[i]&7]++
			mx = max(mx, x[i])
		}
		h, m, c, f := e.buf(32), e.buf(4), e.buf(4), e.buf(4)
		for _, b := range []*cuda.Buffer{h, m, c, f} {
			b.Zero()
		}
		if err := e.fn("atomics").Launch(cuda.Dim3{X: 4}, cuda.Dim3{X: 128}, 0, e.bytes(le32(x)), n, h, m, c, f); err != nil {
			t.Fatal(err)
		}
		gh := u32s(e.down(h, 32))
		for i := range hist {
			if gh[i] != hist[i] {
				t.Fatalf("histogram %v, want %v", gh, hist)
			}
		}
		if g := u32s(e.down(m, 4))[0]; g != mx {
			t.Errorf("atomicMax = %d, want %d", g, mx)
		}
		if g := u32s(e.down(c, 4))[0]; g != n {
			t.Errorf("atomicCAS counter = %d, want %d", g, n)
		}
		if g := math.Float32frombits(u32s(e.down(f, 4))[0]); g != n {
			t.Errorf("float atomicAdd = %v, want %d", g, n)
		}
	})

	t.Run("early-exit-before-barrier", func(t *testing.T) {
		e.t = t
		y := e.buf(4 * 256)
		if err := e.fn("early_exit").Launch(cuda.Dim3{X: 1}, cuda.Dim3{X: 256}, 0, y, 100); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, 100)
		y.DownloadFloat32(got)
		for i, v := range got {
			if v != float32(99-i) {
				t.Fatalf("y[%d] = %v, want %d", i, v, 99-i)
			}
		}
	})

	t.Run("exited-lanes-skip-shuffle", func(t *testing.T) {
		e.t = t
		y := e.buf(4 * 32)
		if err := e.fn("exited_lanes").Launch(cuda.Dim3{X: 1}, cuda.Dim3{X: 32}, 0, y); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, 16)
		y.DownloadFloat32(got)
		for l, v := range got {
			// xor 1 reads the partner lane; xor 16 reads an exited lane: own value.
			if want := float32(l^1) + 100*float32(l); v != want {
				t.Fatalf("lane %d = %v, want %v", l, v, want)
			}
		}
	})

	t.Run("half-warp-masks", func(t *testing.T) {
		e.t = t
		x := make([]float32, 32)
		for i := range x {
			x[i] = float32(rng.IntN(100))
		}
		y, flags := e.buf(4*32), e.buf(8)
		if err := e.fn("half_warps").Launch(cuda.Dim3{X: 1}, cuda.Dim3{X: 32}, 0, e.f32(x), y, flags); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, 32)
		y.DownloadFloat32(got)
		for l := range got {
			h := l &^ 15
			var s float32
			for i := h; i < h+16; i++ {
				s += x[i]
			}
			if want := s + 1000*x[h]; got[l] != want {
				t.Fatalf("lane %d = %v, want %v", l, got[l], want)
			}
		}
		if f := u32s(e.down(flags, 8)); f[0] != 1 || f[1] != 0 {
			t.Fatalf("__syncthreads_and/or = %v, want [1 0]", f)
		}
	})

	t.Run("mma-m16n8k16", func(t *testing.T) {
		e.t = t
		a := make([]uint16, 16*16)
		b := make([]uint16, 16*8)
		af := make([]float64, len(a))
		bf := make([]float64, len(b))
		for i := range a { // halves of the form k/64, k in [-128, 128): exact in fp16
			k := rng.IntN(256) - 128
			a[i], af[i] = halfOf(k), float64(k)/64
		}
		for i := range b {
			k := rng.IntN(256) - 128
			b[i], bf[i] = halfOf(k), float64(k)/64
		}
		c := make([]float32, 16*8)
		for i := range c {
			c[i] = float32(rng.IntN(64)) / 8
		}
		hb := func(h []uint16) []byte {
			out := make([]byte, 2*len(h))
			for i, v := range h {
				out[2*i], out[2*i+1] = byte(v), byte(v>>8)
			}
			return out
		}
		dd := e.buf(4 * 16 * 8)
		if err := e.fn("mma_check").Launch(cuda.Dim3{X: 1}, cuda.Dim3{X: 32}, 0, e.bytes(hb(a)), e.bytes(hb(b)), e.f32(c), dd); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, 16*8)
		dd.DownloadFloat32(got)
		for i := 0; i < 16; i++ {
			for j := 0; j < 8; j++ {
				want := float64(c[i*8+j])
				for k := 0; k < 16; k++ {
					want += af[i*16+k] * bf[k*8+j]
				}
				// Products of k/64 values are multiples of 1/4096 below 2^3: every
				// partial sum is exact in fp32, whatever the order.
				if float64(got[i*8+j]) != want {
					t.Fatalf("D[%d,%d] = %v, want %v", i, j, got[i*8+j], want)
				}
			}
		}
	})

	t.Run("conditional-kernels", func(t *testing.T) {
		e.t = t
		for _, name := range []string{"gpu_only", "never"} {
			if _, err := e.m.Function(name); err == nil || !strings.Contains(err.Error(), "CUDA_ERROR_NOT_FOUND") {
				t.Errorf("kernel %s compiled out for the emulator: lookup = %v, want CUDA_ERROR_NOT_FOUND", name, err)
			}
		}
		y := e.buf(4)
		if err := e.fn("emu_only").Launch(cuda.Dim3{X: 1}, cuda.Dim3{X: 1}, 0, y); err != nil {
			t.Fatal(err)
		}
		if got := make([]float32, 1); y.DownloadFloat32(got) != nil || got[0] != 42 {
			t.Fatalf("emu_only wrote %v, want 42", got)
		}
	})

	t.Run("timing", func(t *testing.T) {
		e.t = t
		const blocks, threads, iters = 4, 256, 200
		y := e.buf(4 * blocks * threads)
		got := make([]float32, blocks*threads)
		for _, tc := range []struct {
			name string
			args []any
			ops  int // lane operations per thread
			want func(i int) float32
		}{
			{"thread-without-switches", []any{y}, 1, func(i int) float32 { return float32(i % threads) }},
			{"shfl-xor", []any{y, iters}, iters, func(i int) float32 { return float32(i % threads) }},
			{"syncthreads", []any{y, iters}, 2 * iters, func(i int) float32 { return float32(iters * (iters - 1) / 2) }},
		} {
			kernel := map[string]string{"thread-without-switches": "bench_plain", "shfl-xor": "bench_shfl", "syncthreads": "bench_sync"}[tc.name]
			start := time.Now()
			if err := e.fn(kernel).Launch(cuda.Dim3{X: blocks}, cuda.Dim3{X: threads}, 0, tc.args...); err != nil {
				t.Fatal(err)
			}
			el := time.Since(start)
			y.DownloadFloat32(got)
			for i, v := range got {
				if v != tc.want(i) {
					t.Fatalf("%s: y[%d] = %v, want %v", tc.name, i, v, tc.want(i))
				}
			}
			t.Logf("%s: %.1f ns per thread and operation (%d blocks x %d threads x %d)", tc.name,
				float64(el.Nanoseconds())/float64(blocks*threads*tc.ops), blocks, threads, tc.ops)
		}
	})

	t.Run("failures", func(t *testing.T) {
		e.t = t
		y := e.buf(4 * 64)
		for _, tc := range []struct {
			name, kernel, want string
			code               cuda.Result
			args               []any
		}{
			{"divergent-barrier", "divergent", "divergent __syncthreads", 719, []any{y}},
			{"shuffle-waits-for-barrier", "stuck_shuffle", "deadlock", 719, []any{y}},
			{"trap", "traps", "__trap()", 719, []any{y}},
			{"mixed-collectives", "mixed_collectives", "different warp collectives", 719, []any{y}},
			{"too-few-params", "row_sum", "takes 3 parameters, the launch passed 2", 1, []any{y, y}},
			{"too-many-params", "traps", "takes 1 parameters, the launch passed 2", 1, []any{y, y}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				err := e.fn(tc.kernel).Launch(cuda.Dim3{X: 2}, cuda.Dim3{X: 64}, 0, tc.args...)
				var ce *cuda.Error
				if !errors.As(err, &ce) || ce.Code != tc.code || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("launch error = %v, want code %d mentioning %q", err, tc.code, tc.want)
				}
			})
		}
		// The device still works after failed launches.
		out := e.buf(4)
		if err := e.fn("row_sum").Launch(cuda.Dim3{X: 1}, cuda.Dim3{X: 32}, 0, e.f32([]float32{1, 2, 3}), out, 3); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, 1)
		out.DownloadFloat32(got)
		if got[0] != 6 {
			t.Fatalf("sum after failures = %v, want 6", got[0])
		}
	})
}

// halfOf returns the fp16 bits of k/64 for |k| <= 128.
func halfOf(k int) uint16 {
	if k == 0 {
		return 0
	}
	var sign uint16
	if k < 0 {
		sign, k = 0x8000, -k
	}
	f := float64(k) / 64
	e := int(math.Floor(math.Log2(f)))
	mant := f/math.Ldexp(1, e) - 1 // [0, 1)
	return sign | uint16(e+15)<<10 | uint16(math.Round(mant*1024))
}

// faultCases are kernels that cannot return an error: their process must
// crash with the reason on stderr, not hang or die silently.
var faultCases = []struct {
	name, src, env, want string
}{
	{"bad-pointer", `extern "C" __global__ void bad_write(float* y) {
    if (blockIdx.x == 1 && threadIdx.x == 5) y = (float*)16;
    y[0] = 1.0f;
}`, "", "sdb-emu: SIGSEGV in kernel bad_write, block (1,0,0), thread (5,0,0) at address 0x10"},
	{"endless-spin", `extern "C" __global__ void bad_write(float* y) {
    // waits for a flag that no thread ever sets
    while (*(volatile float*)y != 12345.0f) {}
}`, "SDBRIDGE_CUDA_EMU_TIMEOUT=1", "sdb-emu: kernel bad_write has run for"},
}

// TestEmulatorFault checks that a kernel writing through a bad pointer, or
// never ending, crashes its process with the kernel named on stderr.
func TestEmulatorFault(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	env := cudatest.Build(t)
	for i, tc := range faultCases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestEmulatorFaultChild$", "-test.count=1")
			cmd.Env = append(append(os.Environ(), env...), "SDBRIDGE_CUDATEST_CHILD=1", fmt.Sprintf("SDB_TEST_FAULT=%d", i))
			if tc.env != "" {
				cmd.Env = append(cmd.Env, tc.env)
			}
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the faulting kernel's process exited cleanly:\n%s", out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("crash output lacks %q:\n%s", tc.want, out)
			}
		})
	}
}

func TestEmulatorFaultChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestEmulatorFault")
	}
	i, err := strconv.Atoi(os.Getenv("SDB_TEST_FAULT"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	m, err := d.CompileModule("fault.cu", faultCases[i].src)
	if err != nil {
		t.Fatal(err)
	}
	f, err := m.Function("bad_write")
	if err != nil {
		t.Fatal(err)
	}
	y, err := d.Alloc(4)
	if err != nil {
		t.Fatal(err)
	}
	if err := y.Zero(); err != nil {
		t.Fatal(err)
	}
	f.Launch(cuda.Dim3{X: 2}, cuda.Dim3{X: 32}, 0, y)
	t.Fatal("the launch returned")
}
