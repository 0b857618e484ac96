// fake_test.go: the driver, cuBLAS and NVRTC bindings exercised end to end
// against stand-in libraries (package cudatest, built with the system C
// compiler into a temp folder; skipped where there is none). The checks run in a
// child test process, since the driver is loaded once per process: open a
// device, copy to and from it, launch a kernel (argument packing), round
// trip an IPC handle (a 64-byte struct by value), and row-major GEMMs
// through the real cuBLAS signatures. The stand-in driver refuses calls
// from a thread without the context current, so this also checks that
// every call goes through the device's locked thread.
package cuda

import (
	"errors"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
)

func TestFakeDriver(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	cudatest.RunChild(t, "TestFakeDriverChild", cudatest.Build(t))
}

func TestFakeDriverChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestFakeDriver")
	}
	if err := Available(); err != nil {
		t.Fatal(err)
	}
	d, err := Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Name != "Fake GPU" || d.Major != 9 || d.Minor != 0 || d.SMs != 132 || !d.VMM || d.Arch() != "sm_90" {
		t.Fatalf("device = %+v", d)
	}
	if _, err := Open(3); err == nil {
		t.Error("Open(3) of a one-device machine succeeded")
	}

	t.Run("copy", func(t *testing.T) {
		b, err := d.Alloc(4 * 5)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Free()
		if err := b.UploadFloat32([]float32{1, 2, 3, 4, 5}); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, 5)
		if err := b.DownloadFloat32(got); err != nil {
			t.Fatal(err)
		}
		if got[4] != 5 || got[0] != 1 {
			t.Fatalf("round trip = %v", got)
		}
		if err := b.FillUint32(math.Float32bits(7), 5); err != nil {
			t.Fatal(err)
		}
		b.DownloadFloat32(got)
		if got[3] != 7 {
			t.Fatalf("fill = %v", got)
		}
		if err := b.UploadFloat32(make([]float32, 6)); err == nil {
			t.Error("upload past the end accepted")
		}
		v, err := b.Slice(8, 8)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.UploadFloat32([]float32{-1, -2}); err != nil {
			t.Fatal(err)
		}
		b.DownloadFloat32(got)
		if got[2] != -1 || got[3] != -2 || got[4] != 7 {
			t.Fatalf("view write = %v", got)
		}
	})

	t.Run("launch", func(t *testing.T) {
		if _, err := d.LoadModule([]byte("fake image")); err == nil || !strings.Contains(err.Error(), "CUDA_ERROR_INVALID_IMAGE") {
			t.Fatalf("LoadModule(garbage) = %v, want CUDA_ERROR_INVALID_IMAGE", err)
		}
		m, err := d.CompileModule("launch_test.cu", `
extern "C" __global__ void add_f32(const float* a, const float* b, float* y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) y[i] = a[i] + b[i];
}
extern "C" __global__ void scale_f32(float* a, float s, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] *= s;
}
`)
		if err != nil {
			t.Fatal(err)
		}
		add, err := m.Function("add_f32")
		if err != nil {
			t.Fatal(err)
		}
		a, _ := d.Alloc(12)
		b, _ := d.Alloc(12)
		y, _ := d.Alloc(12)
		a.UploadFloat32([]float32{1, 2, 3})
		b.UploadFloat32([]float32{10, 20, 30})
		if err := add.Launch(Dim3{X: 1}, Dim3{X: 256}, 0, a, b, y, int64(3)); err != nil {
			t.Fatal(err)
		}
		scale, err := m.Function("scale_f32")
		if err != nil {
			t.Fatal(err)
		}
		if err := scale.Launch(Dim3{X: 1}, Dim3{X: 256}, 0, y, float32(0.5), 3); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, 3)
		y.DownloadFloat32(got)
		if got[0] != 5.5 || got[2] != 16.5 {
			t.Fatalf("(a+b)/2 = %v", got)
		}
		_, err = m.Function("missing_kernel")
		var ce *Error
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "CUDA_ERROR_NOT_FOUND") || !strings.Contains(err.Error(), "missing_kernel") {
			t.Fatalf("lookup of a missing kernel = %v", err)
		}
		if err := scale.Launch(Dim3{X: 1}, Dim3{X: 32}, 0, y); err == nil || !strings.Contains(err.Error(), "CUDA_ERROR_INVALID_VALUE") {
			t.Fatalf("launch with too few arguments = %v, want CUDA_ERROR_INVALID_VALUE", err)
		}
	})

	t.Run("register-host", func(t *testing.T) {
		host := make([]byte, 4096)
		unreg, err := d.RegisterHost(host)
		if err != nil {
			t.Fatal(err)
		}
		if err := unreg(); err != nil {
			t.Fatal(err)
		}
		if _, err := d.RegisterHost(nil); err == nil {
			t.Error("RegisterHost(nil) accepted")
		}
	})

	t.Run("ipc", func(t *testing.T) {
		b, _ := d.Alloc(64)
		defer b.Free()
		h, err := b.IPCHandle()
		if err != nil {
			t.Fatal(err)
		}
		ib, err := d.OpenIPC(h, 64)
		if err != nil {
			t.Fatal(err)
		}
		if ib.Ptr != b.Ptr {
			t.Fatalf("opened %#x, exported %#x", ib.Ptr, b.Ptr)
		}
		if err := ib.Close(); err != nil {
			t.Fatal(err)
		}
		v, _ := b.Slice(0, 8)
		if _, err := v.IPCHandle(); err == nil {
			t.Error("IPC handle of a view accepted")
		}
	})

	t.Run("off-thread-call-fails", func(t *testing.T) {
		// Calling the driver directly (not through Do) from a test
		// goroutine must meet no current context.
		var p uint64
		if r := d.api.cuMemAlloc(&p, 16); r != 201 {
			t.Fatalf("off-thread cuMemAlloc = %d, want 201 (no context)", r)
		}
	})

	t.Run("blas", func(t *testing.T) {
		bl, err := d.NewBLAS()
		if err != nil {
			t.Fatal(err)
		}
		defer bl.Close()
		if err := bl.SetTF32(true); err != nil {
			t.Fatal(err)
		}
		if err := bl.SetTF32(false); err != nil {
			t.Fatal(err)
		}
		// A [2,3], B [3,2] row-major: C = A B.
		a := []float32{1, 2, 3, 4, 5, 6}
		b := []float32{7, 8, 9, 10, 11, 12}
		want := []float32{58, 64, 139, 154}
		da, _ := d.Alloc(24)
		db, _ := d.Alloc(24)
		dc, _ := d.Alloc(16)
		da.UploadFloat32(a)
		db.UploadFloat32(b)
		got := make([]float32, 4)
		for _, tc := range []struct {
			name string
			run  func() error
		}{
			{"sgemm", func() error { return bl.Sgemm(false, false, 2, 2, 3, 1, da, 3, db, 2, 0, dc, 2) }},
			{"gemmex-f32", func() error { return bl.GemmEx(false, false, 2, 2, 3, 1, da, 3, db, 2, 0, dc, 2, R32F, R32F) }},
			{"strided-1", func() error {
				return bl.SgemmStridedBatched(false, false, 2, 2, 3, 1, da, 0, 3, 6, db, 0, 2, 6, 0, dc, 0, 2, 4, 1)
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				dc.FillUint32(0x7fc00000, 4)
				if err := tc.run(); err != nil {
					t.Fatal(err)
				}
				dc.DownloadFloat32(got)
				for i := range want {
					if got[i] != want[i] {
						t.Fatalf("C = %v, want %v", got, want)
					}
				}
			})
		}
		ah := []uint16{0x3c00, 0x4000, 0x4200, 0x4400, 0x4500, 0x4600} // 1..6 in fp16
		bh := []uint16{0x4700, 0x4800, 0x4880, 0x4900, 0x4980, 0x4a00} // 7..12
		dah, _ := d.Alloc(12)
		dbh, _ := d.Alloc(12)
		dch, _ := d.Alloc(8)
		dah.UploadUint16(ah)
		dbh.UploadUint16(bh)
		if err := bl.GemmEx(false, false, 2, 2, 3, 1, dah, 3, dbh, 2, 0, dch, 2, R16F, R16F); err != nil {
			t.Fatal(err)
		}
		gh := make([]uint16, 4)
		dch.DownloadUint16(gh)
		if want := []uint16{0x5340, 0x5400, 0x5858, 0x58d0}; !slices.Equal(gh, want) { // 58 64 139 154
			t.Errorf("fp16 GemmEx = %#x, want %#x", gh, want)
		}
	})

	t.Run("nvrtc-compile-and-cache", func(t *testing.T) {
		dir, _ := cacheDir()
		before, _ := filepath.Glob(filepath.Join(dir, "*.cubin"))
		if _, err := d.Kernel("norm.cu", "group_norm_f32"); err != nil {
			t.Fatal(err)
		}
		// The stand-in NVRTC supports sm_90: one more CUBIN went to the cache.
		m, _ := filepath.Glob(filepath.Join(dir, "*.cubin"))
		if len(m) != len(before)+1 {
			t.Fatalf("cache holds %v (before %v), want one more .cubin", m, before)
		}
		if _, err := d.Kernel("norm.cu", "softmax_rows_f32"); err != nil {
			t.Fatal(err)
		}
		_, err := d.CompileModule("bad.cu", "#error broken\n")
		var ce *CompileError
		if !errors.As(err, &ce) || !strings.Contains(ce.Log, "#error") || ce.Target != "sm_90" {
			t.Fatalf("CompileModule(bad) = %v, want a CompileError for sm_90 with the log", err)
		}
	})
}
