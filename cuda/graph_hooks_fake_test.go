// graph_hooks_fake_test.go: Device.BeforeCapture and BLAS.FixOnCapture on
// the stand-ins: a registered cuBLAS handle gets its fixed workspace from
// Capture itself (before the stream captures, so the allocation is
// allowed) and its captured GEMM replays with new inputs; an unregistered
// or removed handle is left alone; a handle whose cuBLAS lacks
// cublasSetWorkspace_v2 does not stop the capture; hooks run in
// registration order, and a failing hook fails the Capture with no graph
// and leaves the stream usable.
package cuda

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
)

func TestCaptureHooks(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	cudatest.RunChild(t, "TestCaptureHooksChild", cudatest.Build(t))
}

func TestCaptureHooksChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestCaptureHooks")
	}
	d := rtOpen(t)
	newBLAS := func(t *testing.T) *BLAS {
		bl, err := d.NewBLAS()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { bl.Close() })
		return bl
	}
	// C[2,2] = A[2,3] B[3,2], captured, then replayed on new A.
	a, b, c := rtAlloc(t, d, 24), rtAlloc(t, d, 24), rtAlloc(t, d, 16)
	gemm := func(t *testing.T, bl *BLAS) {
		rtUpload32(t, a, []float32{1, 2, 3, 4, 5, 6})
		rtUpload32(t, b, []float32{1, 0, 0, 1, 1, 1})
		g, err := d.Capture(func() error { return bl.Sgemm(false, false, 2, 2, 3, 1, a, 3, b, 2, 0, c, 2) })
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
	cases := []struct {
		name     string
		unhook   bool // remove the hook NewBLAS registers
		register bool // then register one with FixOnCapture
		remove   bool // and remove that one again
		wantWS   int
	}{
		{"a new handle: workspace fixed by Capture", false, false, false, 32 << 20}, // the stand-in device is sm_90
		{"hook removed: left alone", true, false, false, 0},
		{"hook removed, registered again", true, true, false, 32 << 20},
		{"registered again, then removed: left alone", true, true, true, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bl := newBLAS(t)
			if tc.unhook {
				bl.unhook()
				bl.unhook = nil
			}
			if tc.register {
				remove := bl.FixOnCapture()
				if tc.remove {
					remove()
					remove() // twice: a no-op
				} else {
					defer remove()
				}
			}
			gemm(t, bl)
			if got := bl.Workspace(); got != tc.wantWS {
				t.Fatalf("workspace after Capture: %d bytes, want %d", got, tc.wantWS)
			}
		})
	}
	t.Run("cuBLAS without cublasSetWorkspace_v2", func(t *testing.T) {
		old := &BLAS{dev: d, api: &cublasAPI{path: "libcublas-old.so"}}
		defer old.FixOnCapture()()
		gemm(t, newBLAS(t))
		if old.Workspace() != 0 {
			t.Fatalf("workspace %d without the symbol", old.Workspace())
		}
	})
	t.Run("hook order and a failing hook", func(t *testing.T) {
		var order []int
		for i := range 3 {
			defer d.BeforeCapture(func() error { order = append(order, i); return nil })()
		}
		boom := errors.New("boom")
		removeBoom := d.BeforeCapture(func() error { return boom })
		ran := false
		g, err := d.Capture(func() error { ran = true; return nil })
		if !errors.Is(err, boom) || g != nil || ran || !strings.Contains(err.Error(), "before graph capture") {
			t.Fatalf("Capture with a failing hook = %v, %v (fn ran: %v); want the hook's error, no graph, fn not run", g, err, ran)
		}
		if !slices.Equal(order, []int{0, 1, 2}) {
			t.Fatalf("hooks ran in order %v, want [0 1 2]", order)
		}
		removeBoom()
		order = nil
		g, err = d.Capture(func() error { return nil })
		if err != nil {
			t.Fatalf("Capture after removing the failing hook: %v", err)
		}
		g.Close()
		if !slices.Equal(order, []int{0, 1, 2}) {
			t.Fatalf("hooks ran in order %v, want [0 1 2]", order)
		}
	})
}
