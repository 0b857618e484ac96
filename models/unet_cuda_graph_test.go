// unet_cuda_graph_test.go: UNetCUDA with Graphs on, on the stand-ins'
// stream capture and replay (run inside TestImageModelsCUDAChild; the
// stand-in cuBLAS records GEMMs into captures): the first call of a shape
// builds a graph, later calls of that shape replay it with their own inputs
// and timesteps, bit-identical to the eager forward and close to the CPU
// U-Net; another shape gets its own graph; an input left stale in the
// graph's buffer shows as a mismatch; Sync keeps the graphs.
package models

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/sdbridge/sdbridge/nn"
)

// checkGemmReplays fails t unless a cuBLAS GEMM queued during a capture is
// recorded and replayed by the graph with the operands' values at replay
// time (the stand-in cuBLAS records GEMMs into the capture; without that,
// no graph value below could be checked).
func checkGemmReplays(t *testing.T, g *nn.GPU) {
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
	if d := relDiff(got, want); !(d < 1e-2) {
		t.Fatalf("a Linear replayed by a graph after its input changed: rel L2 %.3g against the new input's result (the GEMM is not replayed?)", d)
	}
}

// sameBits reports whether a and b have the same shape and bit-identical
// data, and where they first differ.
func sameBits(a, b *nn.Tensor) (bool, string) {
	if !slices.Equal(a.Shape, b.Shape) {
		return false, fmt.Sprintf("shape %v vs %v", a.Shape, b.Shape)
	}
	for i := range a.Data {
		if math.Float32bits(a.Data[i]) != math.Float32bits(b.Data[i]) {
			return false, fmt.Sprintf("element %d: %v vs %v", i, a.Data[i], b.Data[i])
		}
	}
	return true, ""
}

// eager runs c's forward without graphs.
func eager(t *testing.T, c *UNetCUDA, x *nn.Tensor, ts []float32, ctx *nn.Tensor, res Residuals) *nn.Tensor {
	t.Helper()
	c.Graphs = false
	defer func() { c.Graphs = true }()
	y, err := c.Forward(x, ts, ctx, res)
	if err != nil {
		t.Fatal(err)
	}
	return y
}

// checkUNetCUDAGraphs checks UNetCUDA with Graphs on: each call's output
// must be bit-identical to the eager (uncaptured) forward of the same
// inputs, the same kernels and GEMMs on the stand-ins, and close to the
// CPU U-Net; an input not copied into the graph's buffer must show.
func checkUNetCUDAGraphs(t *testing.T, g *nn.GPU, m cudaMode) {
	if m.skip(t, false) {
		return
	}
	checkGemmReplays(t, g)
	u := tinyUNet(t)
	c, err := NewUNetCUDA(g, u)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Graphs = true
	type inputs struct {
		x, ctx *nn.Tensor // [B, 4, h, w], [B, 77, 128]
		ts     []float32
		res    Residuals
	}
	// The replays are compared with the eager forward (bit for bit) and
	// the builds with the CPU only, to keep the emulated forwards few.
	var last inputs        // the last 10x6 call's inputs, left in its graph's buffers
	var lastOut *nn.Tensor // and its output
	for _, tc := range []struct {
		name     string
		b, h, w  int
		seed     float32
		residual bool
		eager    bool // also compare with the eager forward, bit for bit
	}{
		{"10x6 builds", 2, 10, 6, 1, true, false},
		{"10x6 replays new inputs", 2, 10, 6, -0.6, true, true},
		{"9x5 batch 1 builds its own", 1, 9, 5, 0.8, false, false},
		{"10x6 replays again", 2, 10, 6, 0.3, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := inputs{
				x:   scaled(ramp(tc.b, 4, tc.h, tc.w), tc.seed), // [B, 4, h, w]
				ctx: scaled(ramp(tc.b, 77, 128), 0.7*tc.seed),   // [B, 77, 128]
				ts:  []float32{900 * tc.seed, 10 + 40*tc.seed}[:tc.b],
			}
			if tc.residual {
				in.res = Residuals{}
				for name, s := range ResidualShapes(u.Config, tc.b, tc.h, tc.w) {
					in.res[name] = scaled(ramp(s...), 0.2*tc.seed)
				}
			}
			got, err := c.Forward(in.x, in.ts, in.ctx, in.res)
			if err != nil {
				t.Fatal(err)
			}
			if tc.eager {
				if same, where := sameBits(got, eager(t, c, in.x, in.ts, in.ctx, in.res)); !same {
					t.Fatalf("graph output differs from the eager forward of the same inputs: %s", where)
				}
			}
			want, err := u.Forward(in.x, in.ts, in.ctx, in.res)
			if err != nil {
				t.Fatal(err)
			}
			checkClose(t, "eps (graph)", got, want, m.tol)
			if tc.b == 2 {
				last, lastOut = in, got
			}
		})
	}
	if n, want := len(c.graphs), 2; n != want {
		t.Fatalf("%d graphs built, want %d (one per shape)", n, want)
	}
	if ws, want := g.BLAS.Workspace(), 32<<20; ws != want { // the stand-in device is sm_90
		t.Fatalf("cuBLAS workspace after building graphs: %d bytes, want a fixed %d", ws, want)
	}
	t.Run("stale input shows", func(t *testing.T) {
		// Replay the 10x6 graph without copying a new x into the graph's
		// input buffer: the output must differ from the new x's forward and
		// be exactly the previous call's (the stale x's) output.
		if last.x == nil {
			t.Fatal("no 10x6 case ran")
		}
		var gr *unetGraph
		for _, cand := range c.graphs {
			if slices.Equal(cand.x.Shape, last.x.Shape) {
				gr = cand
			}
		}
		if gr == nil {
			t.Fatalf("no graph for x %v", last.x.Shape)
		}
		x := scaled(ramp(last.x.Shape...), -1.3) // [2, 4, 10, 6]
		if err := gr.graph.Launch(); err != nil {
			t.Fatal(err)
		}
		got, err := gr.out.Download()
		if err != nil {
			t.Fatal(err)
		}
		if same, _ := sameBits(got, eager(t, c, x, last.ts, last.ctx, last.res)); same {
			t.Fatal("a replay with a stale input buffer matches the forward of the new input")
		}
		if same, where := sameBits(got, lastOut); !same {
			t.Fatalf("a replay with a stale x is not the stale x's output: %s", where)
		}
	})
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
		// The 10x6 graph replays with the patched weight.
		ts := []float32{500, 20}
		want, err := u.Forward(last.x, ts, last.ctx, last.res)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Forward(last.x, ts, last.ctx, last.res)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(c.graphs); n != 2 {
			t.Fatalf("%d graphs after a replay following Sync, want 2", n)
		}
		checkClose(t, "eps (graph) after Sync", got, want, m.tol)
	})
}
