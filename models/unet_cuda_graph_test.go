// unet_cuda_graph_test.go: UNetCUDA with Graphs on, on the stand-ins'
// stream capture and replay (run inside TestImageModelsCUDAChild): the
// first call of a shape builds a graph, later calls of that shape replay it
// with their own inputs (checked against the CPU U-Net), another shape gets
// its own graph, and Sync drops them.
package models

import (
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/nn"
)

// gemmIsCaptured reports whether a cuBLAS GEMM queued during a capture is
// replayed by the graph (the stand-in cuBLAS may run it at once instead).
func gemmIsCaptured(t *testing.T, g *nn.GPU) bool {
	x := ramp(2, 8) // [2, 8]
	w := ramp(3, 8) // [3, 8]
	dx := upload(t, g, x)
	dw := upload(t, g, w)
	var y *nn.GPUTensor
	poison := g.Poison
	g.Poison = false // a poisoning memset cannot be captured
	defer func() { g.Poison = poison }()
	gr, err := g.Dev.Capture(func() error {
		var err error
		y, err = g.Linear(dx, dw, nil) // [2, 3]
		return err
	})
	if err != nil {
		t.Fatalf("capturing a Linear: %v", err)
	}
	defer gr.Close()
	defer y.Free()
	x2 := scaled(ramp(2, 8), -3) // [2, 8]
	if err := dx.Set(x2); err != nil {
		t.Fatal(err)
	}
	if err := gr.Launch(); err != nil {
		t.Fatal(err)
	}
	got, err := y.Download()
	if err != nil {
		t.Fatal(err)
	}
	want := (&nn.Linear{Weight: w}).Forward(x2)
	return relDiff(got, want) < 1e-2
}

func checkUNetCUDAGraphs(t *testing.T, g *nn.GPU, m cudaMode) {
	if m.skip(t, false) {
		return
	}
	// Where the stand-in cuBLAS runs GEMMs at capture time instead of
	// recording them, replayed values are wrong by construction: then only
	// the builds are checked (the capture has no forbidden call, one graph
	// per shape, outputs shaped right), not the values.
	replays := gemmIsCaptured(t, g)
	if !replays {
		t.Log("the stand-in cuBLAS does not record GEMMs in a capture: graph values are not checked, only the builds")
	}
	u := tinyUNet(t)
	c, err := NewUNetCUDA(g, u)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Graphs = true
	for _, tc := range []struct {
		name     string
		b, h, w  int
		seed     float32
		residual bool
	}{
		{"10x6 builds", 2, 10, 6, 1, true},
		{"10x6 replays new inputs", 2, 10, 6, -0.6, true},
		{"9x5 batch 1 builds its own", 1, 9, 5, 0.8, false},
		{"10x6 replays again", 2, 10, 6, 0.3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !replays && !strings.Contains(tc.name, "builds") {
				t.Skip("a replay's values cannot be checked here")
			}
			x := scaled(ramp(tc.b, 4, tc.h, tc.w), tc.seed) // [B, 4, h, w]
			ctx := scaled(ramp(tc.b, 77, 128), 0.7*tc.seed) // [B, 77, 128]
			ts := []float32{900 * tc.seed, 10}[:tc.b]
			var res Residuals
			if tc.residual {
				res = Residuals{}
				for name, s := range ResidualShapes(u.Config, tc.b, tc.h, tc.w) {
					res[name] = scaled(ramp(s...), 0.2*tc.seed)
				}
			}
			got, err := c.Forward(x, ts, ctx, res)
			if err != nil {
				t.Fatal(err)
			}
			if !replays {
				if want := []int{tc.b, 4, tc.h, tc.w}; !slices.Equal(got.Shape, want) {
					t.Fatalf("eps shape %v, want %v", got.Shape, want)
				}
				return
			}
			want, err := u.Forward(x, ts, ctx, res)
			if err != nil {
				t.Fatal(err)
			}
			checkClose(t, "eps (graph)", got, want, m.tol)
		})
	}
	if n, want := len(c.graphs), 2; n != want {
		t.Fatalf("%d graphs built, want %d (one per shape)", n, want)
	}
	t.Run("sync in place", func(t *testing.T) {
		// A patched weight (a LoRA's W += delta) rewritten by Sync keeps its
		// device address: graphs stay, and the result follows the patch.
		w := u.OutputBlocks[3].Layers[0].(*ResBlock).InConv.Weight
		before := c.DeviceWeight(w)
		for i := range w.Data {
			w.Data[i] *= 1.5
		}
		if err := c.Sync([]*nn.Tensor{w}); err != nil {
			t.Fatal(err)
		}
		if c.DeviceWeight(w) != before || before == nil {
			t.Fatal("Sync moved the weight's device copy")
		}
		if n := len(c.graphs); n != 2 {
			t.Fatalf("%d graphs after Sync, want 2", n)
		}
		x, ctx, ts := ramp(2, 4, 10, 6), ramp(2, 77, 128), []float32{500, 20} // [2, 4, 10, 6], [2, 77, 128]
		want, err := u.Forward(x, ts, ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Graphs = false
		defer func() { c.Graphs = true }()
		got, err := c.Forward(x, ts, ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkClose(t, "eps after Sync", got, want, m.tol)
	})
}
