// kernels_test.go: checks of the kernel prelude: every served kernel
// source starts with it (so the compile cache key covers it), its fp16
// conversions (SDB_EMU branch) agree bit for bit with an independent
// nearest-even reference over all halves and a million floats, its MMA
// emulation and reductions match plain arithmetic (compiled with g++ and
// testdata/prelude_shim.cpp), and its PTX branch compiles with a real
// NVRTC when SDBRIDGE_CUDA_LIB_DIR points at one.
package cuda

import (
	"encoding/binary"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/safetensors"
)

func TestKernelSourcePrelude(t *testing.T) {
	pre := KernelPrelude()
	if !strings.Contains(pre, "mma_m16n8k16") || !strings.Contains(pre, "typedef unsigned short half_t;") {
		t.Fatal("prelude lacks half_t or mma_m16n8k16")
	}
	for _, f := range KernelFiles() {
		if !strings.HasSuffix(f, ".cu") {
			t.Errorf("KernelFiles lists %q, not a kernel file", f)
		}
		src, err := KernelSource(f)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := kernelFS.ReadFile("kernels/" + f)
		if !strings.Contains(src, pre) || !strings.HasSuffix(src, string(raw)) {
			t.Errorf("%s: served source is not prelude + file", f)
		}
		// The cache key is taken over the served source, so a prelude
		// change recompiles every file.
		if cacheKey(f, src, "sm_90", 12, 0) == cacheKey(f, strings.Replace(src, pre, pre+" ", 1), "sm_90", 12, 0) {
			t.Errorf("%s: cache key does not change with the prelude", f)
		}
	}
	if _, err := KernelSource(preludeFile); err == nil {
		t.Error("KernelSource(prelude.cuh) succeeded; the prelude is not a kernel file")
	}
}

// refF16 rounds f to the nearest binary16 by search over the finite
// positive halves (ties to the even bit pattern), independently of
// safetensors.F32ToF16 and the prelude.
func refF16(f float32) uint16 {
	if f != f {
		return 0x7e00
	}
	var sign uint16
	x := float64(f)
	if math.Signbit(x) {
		sign, x = 0x8000, -x
	}
	if x >= 65520 { // halfway between 65504 and 2^16 rounds to the even pattern, infinity
		return sign | 0x7c00
	}
	val := func(h uint16) float64 { return float64(safetensorsDecode(h)) }
	hi := uint16(sort.Search(0x7c00, func(i int) bool { return val(uint16(i)) >= x }))
	if hi == 0 {
		return sign
	}
	lo := hi - 1
	dl, dh := x-val(lo), val(hi)-x
	switch {
	case dl < dh:
		return sign | lo
	case dh < dl:
		return sign | hi
	case lo&1 == 0:
		return sign | lo
	}
	return sign | hi
}

// safetensorsDecode widens one half through the safetensors table.
func safetensorsDecode(h uint16) float32 {
	var out [1]float32
	safetensors.F16ToF32(out[:], []uint16{h})
	return out[0]
}

// f16Probes returns the floats the conversion test feeds: a stride over
// all float32 bit patterns, every half-way point between adjacent halves
// with its two neighbouring floats, and special values.
func f16Probes() []float32 {
	var xs []float32
	for u := uint64(0); u < 1<<32; u += 4099 {
		xs = append(xs, math.Float32frombits(uint32(u)))
	}
	for h := uint16(0); h < 0x7c00; h++ {
		a, b := float64(safetensorsDecode(h)), float64(safetensorsDecode(h+1))
		if h == 0x7bff {
			b = 65536
		}
		mid := float32((a + b) / 2) // exact: a half-way point needs 12 significant bits
		for _, v := range []float32{mid, math.Nextafter32(mid, 0), math.Nextafter32(mid, 1e30)} {
			xs = append(xs, v, -v)
		}
	}
	inf := float32(math.Inf(1))
	xs = append(xs, 0, float32(math.Copysign(0, -1)), inf, -inf, float32(math.NaN()), 65504, 65519.996, 65520, 1e-8,
		float32(math.Ldexp(1, -24)), float32(math.Ldexp(1, -25)), math.Nextafter32(float32(math.Ldexp(1, -25)), 1),
		float32(math.Ldexp(1.5, -25)), float32(math.Ldexp(1, -14)), math.Nextafter32(float32(math.Ldexp(1, -14)), 0))
	return xs
}

// buildShim compiles testdata/prelude_shim.cpp with the prelude's SDB_EMU
// branch, skipping without a C++20 compiler.
func buildShim(t *testing.T) string {
	t.Helper()
	cxx, err := exec.LookPath("c++")
	if err != nil {
		t.Skip("no C++ compiler (c++) to build the prelude test program")
	}
	bin := filepath.Join(t.TempDir(), "prelude_shim")
	out, err := exec.Command(cxx, "-std=c++20", "-O1", "-DSDB_EMU", "-Ikernels", "-pthread", "-o", bin, "testdata/prelude_shim.cpp").CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "barrier") && strings.Contains(string(out), "No such file") {
			t.Skipf("this C++ compiler lacks <barrier> (C++20): %s", out)
		}
		t.Fatalf("compiling the prelude test program: %v\n%s", err, out)
	}
	return bin
}

func TestPreludeEmu(t *testing.T) {
	bin := buildShim(t)
	t.Run("f16", func(t *testing.T) {
		dir := t.TempDir()
		xs := f16Probes()
		in := make([]byte, 4*len(xs))
		for i, v := range xs {
			binary.LittleEndian.PutUint32(in[4*i:], math.Float32bits(v))
		}
		inF, outH, outF := filepath.Join(dir, "in"), filepath.Join(dir, "h"), filepath.Join(dir, "f")
		if err := os.WriteFile(inF, in, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "conv", inF, outH, outF).CombinedOutput(); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		hb, _ := os.ReadFile(outH)
		fb, _ := os.ReadFile(outF)
		if len(hb) != 2*len(xs) || len(fb) != 4<<16 {
			t.Fatalf("program wrote %d and %d bytes", len(hb), len(fb))
		}
		bad := 0
		for i, x := range xs {
			got := binary.LittleEndian.Uint16(hb[2*i:])
			want, host := refF16(x), safetensors.F32ToF16(x)
			if x != x { // any NaN will do; signs and payloads differ between converters
				if got&0x7c00 != 0x7c00 || got&0x3ff == 0 || host&0x7c00 != 0x7c00 || host&0x3ff == 0 {
					t.Errorf("f2h(NaN) = %#04x, host %#04x, want NaN", got, host)
				}
				continue
			}
			if got != want || host != want {
				if bad++; bad <= 10 {
					t.Errorf("f2h(%g = %#08x) = %#04x, host F32ToF16 %#04x, want %#04x", x, math.Float32bits(x), got, host, want)
				}
			}
		}
		for h := 0; h < 1<<16; h++ {
			got := binary.LittleEndian.Uint32(fb[4*h:])
			want := math.Float32bits(safetensorsDecode(uint16(h)))
			isNaN := h&0x7c00 == 0x7c00 && h&0x3ff != 0
			if isNaN && math.IsNaN(float64(math.Float32frombits(got))) {
				continue
			}
			if got != want {
				if bad++; bad <= 20 {
					t.Errorf("h2f(%#04x) = %#08x, want %#08x", h, got, want)
				}
			}
		}
		t.Logf("%d floats rounded and all 65536 halves widened; %d mismatches", len(xs), bad)
	})
	t.Run("mma-reduce", func(t *testing.T) {
		re := regexp.MustCompile(`mma maxerr (\S+) maxref (\S+) reduce maxerr (\S+)`)
		for _, seed := range []string{"1", "2", "12345"} {
			out, err := exec.Command(bin, "mma", seed).CombinedOutput()
			m := re.FindStringSubmatch(string(out))
			if err != nil || m == nil {
				t.Fatalf("seed %s: %v\n%s", seed, err, out)
			}
			e, _ := strconv.ParseFloat(m[1], 64)
			ref, _ := strconv.ParseFloat(m[2], 64)
			red, _ := strconv.ParseFloat(m[3], 64)
			// One float rounding of the exact sum.
			if e > ref*math.Ldexp(1, -23) || ref == 0 {
				t.Errorf("seed %s: mma max error %g for results up to %g", seed, e, ref)
			}
			if red > 1e-3 {
				t.Errorf("seed %s: warp/block reductions off by %g", seed, red)
			}
		}
	})
}

// TestPreludeCompiles compiles a kernel that uses every prelude function
// with the real NVRTC (PTX branch) and checks the instructions it must
// emit; set SDBRIDGE_CUDA_LIB_DIR to a folder with libnvrtc.so.* to run.
func TestPreludeCompiles(t *testing.T) {
	n, err := LoadNVRTC()
	if err != nil {
		t.Skipf("no NVRTC here: %v", err)
	}
	src := KernelPrelude() + `
extern "C" __global__ void prelude_probe(const half_t* x, float* y, const unsigned* ab, float* d) {
    __shared__ float sh[33];
    float v = to_f<half_t>(x[threadIdx.x]) + to_f<float>(y[threadIdx.x]);
    float s = block_sum(v, sh), m = block_max(v, sh);
    y[threadIdx.x] = warp_sum(v) + warp_max(v) + s + m + h2f(from_f<half_t>(v)) + from_f<float>(v);
    unsigned a[4] = {ab[0], ab[1], ab[2], ab[3]}, b[2] = {ab[4], ab[5]};
    float c[4] = {0, 0, 0, 0};
    mma_m16n8k16(c, a, b, c);
    for (int i = 0; i < 4; i++) d[4 * threadIdx.x + i] = c[i] + (float)pack_h2(f2h(v), f2h(-v));
}
`
	ptx, err := n.Compile("prelude_probe.cu", src, "compute_80")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ptx), ".version") {
		t.Skipf("NVRTC %s returned no PTX text; a stand-in", n.Path)
	}
	for _, want := range []string{"mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", "cvt.rn.f16.f32", "cvt.f32.f16", "shfl.sync.bfly"} {
		if !strings.Contains(string(ptx), want) {
			t.Errorf("PTX lacks %q", want)
		}
	}
	if _, err := n.Compile("prelude_probe.cu", src, "sm_90"); err != nil {
		t.Errorf("sm_90: %v", err)
	}
}
