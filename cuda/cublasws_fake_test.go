// cublasws_fake_test.go: BLAS.FixWorkspace on the stand-in cuBLAS (a
// fixed workspace of the recommended size, set once, refused during a
// capture, GEMMs captured with it replay) and without the symbol (an
// error naming it, nothing called).
package cuda

import (
	"errors"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
)

func TestFixWorkspaceMissingSymbol(t *testing.T) {
	bl := &BLAS{api: &cublasAPI{path: "libcublas-old.so"}}
	err := bl.FixWorkspace()
	var me *MissingSymbolError
	if !errors.As(err, &me) || me.Symbol != "cublasSetWorkspace_v2" || !errors.Is(err, ErrMissingSymbol) {
		t.Fatalf("FixWorkspace without the symbol = %v", err)
	}
	if bl.Workspace() != 0 {
		t.Fatalf("workspace %d without the symbol", bl.Workspace())
	}
}

func TestFixWorkspace(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	cudatest.RunChild(t, "TestFixWorkspaceChild", cudatest.Build(t))
}

func TestFixWorkspaceChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestFixWorkspace")
	}
	d := rtOpen(t)
	bl, err := d.NewBLAS()
	if err != nil {
		t.Fatal(err)
	}
	defer bl.Close()
	if bl.Workspace() != 0 {
		t.Fatalf("a new handle has a fixed workspace of %d bytes", bl.Workspace())
	}
	if err := bl.FixWorkspace(); err != nil {
		t.Fatal(err)
	}
	ws := bl.ws
	if want := 32 << 20; bl.Workspace() != want || ws.Ptr%256 != 0 { // the stand-in device is sm_90
		t.Fatalf("workspace %d bytes at %#x, want %d, 256-byte aligned", bl.Workspace(), ws.Ptr, want)
	}
	if err := bl.FixWorkspace(); err != nil || bl.ws != ws {
		t.Fatalf("second FixWorkspace: %v, buffer %p (was %p)", err, bl.ws, ws)
	}

	// A GEMM captured on the fixed workspace replays with the new inputs:
	// C[2,2] = A[2,3] B[3,2].
	a, b, c := rtAlloc(t, d, 24), rtAlloc(t, d, 24), rtAlloc(t, d, 16)
	rtUpload32(t, a, []float32{1, 2, 3, 4, 5, 6})
	rtUpload32(t, b, []float32{1, 0, 0, 1, 1, 1})
	other, err := d.NewBLAS()
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.unhook() // a handle without NewBLAS's capture hook: fixing it mid-capture is refused
	other.unhook = nil
	g, err := d.Capture(func() error {
		if err := other.FixWorkspace(); !errors.Is(err, ErrCapturing) {
			t.Errorf("FixWorkspace during a capture = %v, want ErrCapturing", err)
		}
		return bl.Sgemm(false, false, 2, 2, 3, 1, a, 3, b, 2, 0, c, 2)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	rtUpload32(t, a, []float32{2, 0, 0, 0, 0, 3})
	if err := g.Launch(); err != nil {
		t.Fatal(err)
	}
	if got, want := rtDownload32(t, c, 4), []float32{2, 0, 3, 3}; !rtEqual32(got, want) {
		t.Fatalf("replayed GEMM = %v, want %v", got, want)
	}
}
