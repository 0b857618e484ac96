// cuda_test.go: tests that run without a GPU: the no-driver and
// missing-library paths return clear errors (no panics), the row-major
// GEMM bookkeeping is checked against a fake column-major BLAS, launch
// arguments pack as the kernel reads them, targets and cache keys are
// chosen as documented, and the embedded kernels are present (and, where
// an NVRTC is on the machine, compile). Nothing here needs libcuda.
package cuda

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpenDriverMissing(t *testing.T) {
	_, err := openDriver([]string{"libcuda-sdbridge-missing.so.1"})
	if !errors.Is(err, ErrNoDriver) {
		t.Fatalf("openDriver(missing) = %v, want ErrNoDriver", err)
	}
	if !strings.Contains(err.Error(), "use --device cpu") {
		t.Errorf("error %q does not tell the user what to do", err)
	}
}

func TestEntryPointsWithoutDriver(t *testing.T) {
	if Available() == nil {
		t.Skip("a CUDA driver and device are present on this machine")
	}
	err := Available()
	if !strings.Contains(err.Error(), "--device cpu") {
		t.Errorf("Available() = %q, want a message naming --device cpu", err)
	}
	tests := []struct {
		name string
		call func() error
	}{
		{"Open", func() error { _, err := Open(0); return err }},
		{"Driver", func() error { _, err := Driver(); return err }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); err == nil {
				t.Fatalf("%s succeeded without a usable driver", tc.name)
			}
		})
	}
}

func TestMissingLibrariesErrors(t *testing.T) {
	_, err := openNVRTC([]string{"libnvrtc-sdbridge-missing.so"})
	if err == nil || !strings.Contains(err.Error(), "NVRTC") || !strings.Contains(err.Error(), "--device cpu") {
		t.Errorf("openNVRTC(missing) = %v, want an error naming NVRTC and --device cpu", err)
	}
	for _, s := range ProbeLibraries() {
		if s.Loaded == "" && s.Err == nil {
			t.Errorf("probe of %s: neither loaded nor an error", s.Name)
		}
		if s.String() == "" {
			t.Errorf("probe of %s has no text", s.Name)
		}
	}
}

// fakeColGemm is a reference column-major SGEMM (BLAS semantics):
// C[i + j*ldc] = alpha * sum_p opA(i,p) opB(p,j) + beta C.
func fakeColGemm(g colGemm, alpha float32, a []float32, b []float32, beta float32, c []float32) {
	at := func(x []float32, ld int, op int32, i, j int) float32 {
		if op == cublasOpT {
			return x[j+i*ld]
		}
		return x[i+j*ld]
	}
	for j := 0; j < g.n; j++ {
		for i := 0; i < g.m; i++ {
			var s float64
			for p := 0; p < g.k; p++ {
				s += float64(at(a, g.lda, g.opA, i, p)) * float64(at(b, g.ldb, g.opB, p, j))
			}
			c[i+j*g.ldc] = alpha*float32(s) + beta*c[i+j*g.ldc]
		}
	}
}

func TestColMajorArgsAgainstFake(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name           string
		transA, transB bool
		m, n, k, pad   int
	}{
		{"NN", false, false, 5, 7, 3, 0},
		{"NT", false, true, 4, 6, 9, 2},
		{"TN", true, false, 8, 3, 5, 1},
		{"TT", true, true, 6, 5, 4, 3},
		{"NN-padded", false, false, 3, 4, 6, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, n, k := tc.m, tc.n, tc.k
			ar, ac := m, k
			if tc.transA {
				ar, ac = k, m
			}
			br, bc := k, n
			if tc.transB {
				br, bc = n, k
			}
			lda, ldb, ldc := ac+tc.pad, bc+tc.pad, n+tc.pad
			a := make([]float32, ar*lda)
			b := make([]float32, br*ldb)
			c := make([]float32, m*ldc)
			for i := range a {
				a[i] = rng.Float32()*2 - 1
			}
			for i := range b {
				b[i] = rng.Float32()*2 - 1
			}
			for i := range c {
				c[i] = rng.Float32()*2 - 1
			}
			want := append([]float32(nil), c...)
			alpha, beta := float32(0.75), float32(0.5)
			for i := 0; i < m; i++ {
				for j := 0; j < n; j++ {
					var s float64
					for p := 0; p < k; p++ {
						ai, bi := i*lda+p, p*ldb+j
						if tc.transA {
							ai = p*lda + i
						}
						if tc.transB {
							bi = j*ldb + p
						}
						av, bv := a[ai], b[bi]
						s += float64(av) * float64(bv)
					}
					want[i*ldc+j] = alpha*float32(s) + beta*want[i*ldc+j]
				}
			}
			g, err := colMajorArgs(tc.transA, tc.transB, m, n, k, lda, ldb, ldc)
			if err != nil {
				t.Fatal(err)
			}
			// The column-major call takes the caller's B first, A second.
			fakeColGemm(g, alpha, b, a, beta, c)
			for i := range want {
				if d := math.Abs(float64(c[i] - want[i])); d > 1e-5 {
					t.Fatalf("index %d: got %v want %v (diff %g)", i, c[i], want[i], d)
				}
			}
		})
	}
}

func TestColMajorArgsRejectsBadDims(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		transA, transB         bool
		m, n, k, lda, ldb, ldc int
	}{
		{"zero-m", false, false, 0, 4, 4, 4, 4, 4},
		{"lda-small", false, false, 4, 4, 8, 7, 4, 4},
		{"lda-small-transA", true, false, 8, 4, 4, 7, 4, 4},
		{"ldb-small-transB", false, true, 4, 4, 8, 8, 7, 4},
		{"ldc-small", false, false, 4, 5, 4, 4, 5, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := colMajorArgs(tc.transA, tc.transB, tc.m, tc.n, tc.k, tc.lda, tc.ldb, tc.ldc); err == nil {
				t.Fatal("accepted bad dimensions")
			}
		})
	}
}

func TestPackArg(t *testing.T) {
	for _, tc := range []struct {
		name string
		arg  any
		want uint64
	}{
		{"buffer", &Buffer{Ptr: 0x7f0000001000}, 0x7f0000001000},
		{"nil-buffer", (*Buffer)(nil), 0},
		{"int", 320, 320},
		{"neg-int", -1, 0xffffffff},
		{"int32", int32(-2), 0xfffffffe},
		{"uint32", uint32(7), 7},
		{"int64", int64(1) << 40, 1 << 40},
		{"float32", float32(1), 0x3f800000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := packArg(tc.arg)
			if err != nil || got != tc.want {
				t.Fatalf("packArg(%v) = %#x, %v; want %#x", tc.arg, got, err, tc.want)
			}
		})
	}
	if _, err := packArg("x"); err == nil {
		t.Error("packArg(string) accepted")
	}
	if _, err := packArg(1 << 40); err == nil {
		t.Error("packArg(int beyond int32) accepted")
	}
}

func TestPickTarget(t *testing.T) {
	for _, tc := range []struct {
		name    string
		archs   []int
		arch    int
		want    string
		wantErr bool
	}{
		{"unknown-list", nil, 90, "sm_90", false},
		{"supported", []int{75, 80, 86, 89, 90}, 90, "sm_90", false},
		{"newer-device", []int{75, 80, 90}, 100, "compute_90", false},
		{"between", []int{75, 80, 90}, 86, "compute_80", false},
		{"too-old", []int{90, 100}, 80, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pickTarget(tc.archs, tc.arch)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("pickTarget(%v, %d) = %q, %v; want %q (error %v)", tc.archs, tc.arch, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestCacheKeyAndWrite(t *testing.T) {
	k1 := cacheKey("norm.cu", "src", "sm_90", 13, 0)
	for _, other := range []string{
		cacheKey("norm.cu", "src2", "sm_90", 13, 0),
		cacheKey("norm.cu", "src", "sm_80", 13, 0),
		cacheKey("norm.cu", "src", "sm_90", 12, 8),
	} {
		if other == k1 {
			t.Fatal("cache key ignores an input")
		}
	}
	if k1 != cacheKey("norm.cu", "src", "sm_90", 13, 0) {
		t.Fatal("cache key not deterministic")
	}
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	dir, err := cacheDir()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, k1+".cubin")
	writeCache(file, []byte("image"))
	got, err := os.ReadFile(file)
	if err != nil || string(got) != "image" {
		t.Fatalf("cache round trip: %q, %v", got, err)
	}
}

// kernelNames are the kernels the nn CUDA path launches, by file.
var kernelNames = map[string][]string{
	"norm.cu":        {"group_norm_f32", "layer_norm_f32", "softmax_rows_f32"},
	"elementwise.cu": {"silu_f32", "add_f32", "geglu_f32", "add_channel_bias_f32", "add_row_bias_f32", "add_batch_channel_bias_f32", "transpose_tiled_f32", "transpose_tiled_f16", "upsample_nearest_f32", "concat2_f32"},
	"conv.cu":        {"im2col_f32"},
}

func TestEmbeddedKernels(t *testing.T) {
	files := KernelFiles()
	if len(files) < len(kernelNames) {
		t.Fatalf("embedded kernel files %v, want at least %d", files, len(kernelNames))
	}
	for file, names := range kernelNames {
		t.Run(file, func(t *testing.T) {
			src, err := KernelSource(file)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range names {
				if !strings.Contains(src, `extern "C" __global__ void `+n+"(") {
					t.Errorf("%s: no extern \"C\" kernel %s", file, n)
				}
			}
			if strings.Contains(src, "#include") {
				t.Errorf("%s includes a header; NVRTC is given no include path", file)
			}
		})
	}
	if _, err := KernelSource("missing.cu"); err == nil {
		t.Error("KernelSource(missing) succeeded")
	}
}

// TestKernelsCompile compiles every embedded kernel with NVRTC when one is
// on this machine (NVRTC needs no GPU): set SDBRIDGE_CUDA_LIB_DIR to a
// folder holding libnvrtc.so.* to run it.
func TestKernelsCompile(t *testing.T) {
	n, err := LoadNVRTC()
	if err != nil {
		t.Skipf("no NVRTC here: %v", err)
	}
	target, err := n.Target(90)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("NVRTC %d.%d (%s), target %s", n.Major, n.Minor, n.Path, target)
	for _, file := range KernelFiles() {
		t.Run(file, func(t *testing.T) {
			src, _ := KernelSource(file)
			img, err := n.Compile(file, src, target)
			if err != nil {
				t.Fatal(err)
			}
			if len(img) == 0 {
				t.Fatal("empty image")
			}
		})
	}
	t.Run("error-log", func(t *testing.T) {
		_, err := n.Compile("bad.cu", `extern "C" __global__ void k(float* x) { x[0] = undefined_name; }`, target)
		var ce *CompileError
		if !errors.As(err, &ce) || !strings.Contains(ce.Log, "undefined_name") {
			t.Fatalf("Compile(bad) = %v, want a CompileError whose log names the bad identifier", err)
		}
	})
}
