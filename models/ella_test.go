// ella_test.go tests the ELLA connector: size inference, strict loading
// errors, the width checks the plugin uses, AdaLayerNorm's shift-first
// order, the squared-ReLU MLP, and that the batched forms equal one call per
// timestep. The numeric check against the official model.py is
// golden/run_ella_test.go.
package models

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdbridge/sdbridge/nn"
)

func openFixELLA(t *testing.T, ts []fixTensor, heads int) (*ELLA, error) {
	t.Helper()
	return OpenELLA(fixFile(t, ts), heads)
}

func TestLoadELLAInfersSizes(t *testing.T) {
	e, err := openFixELLA(t, fixELLATensors(1), 0)
	if err != nil {
		t.Fatal(err)
	}
	got := []int{e.Width, e.InputDim, e.NumLatents, e.TimeChannels, e.TimeEmbedDim, len(e.Blocks), e.Heads}
	want := []int{fixEW, fixEDin, fixEQ, fixECt, fixEE, fixEL, ELLADefaultHeads}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("W, Din, Q, Ct, E, layers, heads (-want +got):\n%s", diff)
	}
}

func TestLoadELLAErrors(t *testing.T) {
	base := fixELLATensors(2)
	drop := func(name string) []fixTensor {
		return fixEdit(base, func(t *fixTensor) bool { return t.Name != name })
	}
	tests := []struct {
		name    string
		ts      []fixTensor
		heads   int
		wantErr string
	}{
		{"missing latents", drop("connector.latents"), 0, `missing tensor "connector.latents"`},
		{"missing time embedding", drop("time_embedding.linear_2.weight"), 0, `"time_embedding.linear_2.weight"`},
		{"missing proj_in", drop("connector.proj_in.weight"), 0, `"connector.proj_in.weight"`},
		{"missing bias names the key", drop("connector.perceiver_blocks.1.mlp.c_proj.bias"), 0,
			`missing tensor "connector.perceiver_blocks.1.mlp.c_proj.bias"`},
		{"no blocks", fixEdit(base, func(t *fixTensor) bool { return !strings.Contains(t.Name, "perceiver_blocks") }), 0, "no perceiver blocks"},
		{"mis-shaped in_proj", fixEdit(base, func(t *fixTensor) bool {
			if t.Name == "connector.perceiver_blocks.0.attn.in_proj_bias" {
				t.Shape, t.Vals = []int{fixEW}, t.Vals[:fixEW]
			}
			return true
		}), 0, `"connector.perceiver_blocks.0.attn.in_proj_bias" has shape [16], want [48]`},
		{"proj_out refused", append(base, fixTensor{Name: "connector.proj_out.weight", Shape: []int{4, fixEW}, Vals: make([]float32, 4*fixEW)}), 0,
			`unexpected tensor "connector.proj_out.weight"`},
		{"heads do not divide the width", base, 3, "width 16"},
		{"negative heads", base, -2, "heads"},
		{"a CLIP file", []fixTensor{{Name: "text_model.final_layer_norm.weight", Shape: []int{4}, Vals: make([]float32, 4)}}, 0,
			"not an ELLA connector file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := openFixELLA(t, tc.ts, tc.heads)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestELLACheckDims(t *testing.T) {
	e, err := openFixELLA(t, fixELLATensors(3), 0)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		err     error
		wantErr string
	}{
		{"matching U-Net context", e.CheckContextDim(fixEW), ""},
		{"SD 2.x U-Net context", e.CheckContextDim(1024), "width is 16 but the U-Net's cross-attention context dim is 1024"},
		{"matching text encoder", e.CheckInputDim(fixEDin), ""},
		{"wrong text encoder", e.CheckInputDim(4096), "takes 6 features but the text encoder gives 4096"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.wantErr == "" {
				if tc.err != nil {
					t.Fatalf("unexpected error %v", tc.err)
				}
				return
			}
			if !errors.Is(tc.err, ErrELLAShape) || !strings.Contains(tc.err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want ErrELLAShape containing %q", tc.err, tc.wantErr)
			}
		})
	}
}

func TestELLAModulateShiftFirst(t *testing.T) {
	normed := nn.From([]float32{1, -1}, 1, 1, 2)   // [1, 1, 2]
	mod := nn.From([]float32{10, 20, 1, 2}, 1, 4)  // [1, 4]: shift [10 20], scale [1 2]
	got := modulate(normed, mod)                   // [1, 1, 2]
	want := []float32{1*(1+1) + 10, -1*(1+2) + 20} // x*(1+scale)+shift
	if diff := cmp.Diff(want, got.Data); diff != "" {
		t.Errorf("modulate (-want +got):\n%s", diff)
	}
}

func TestELLAMLPSquaredReLU(t *testing.T) {
	id := nn.From([]float32{1, 0, 0, 1}, 2, 2) // identity [2, 2]
	m := ELLAMLP{FC: &nn.Linear{Weight: id}, Proj: &nn.Linear{Weight: id}}
	got := m.Forward(nn.From([]float32{-2, 3}, 1, 1, 2))
	if diff := cmp.Diff([]float32{0, 9}, got.Data); diff != "" {
		t.Errorf("relu(x)^2 (-want +got):\n%s", diff)
	}
}

func ellaFeatures(seed uint64, b, n int) *nn.Tensor {
	rng := rand.New(rand.NewPCG(seed, 3))
	x := nn.New(b, n, fixEDin) // [B, N, Din]
	for i := range x.Data {
		x.Data[i] = float32(rng.NormFloat64())
	}
	return x
}

func TestELLABatchedForms(t *testing.T) {
	e, err := openFixELLA(t, fixELLATensors(4), 0)
	if err != nil {
		t.Fatal(err)
	}
	one := func(x *nn.Tensor, tv float32) []float32 {
		out, err := e.Forward(x, []float32{tv})
		if err != nil {
			t.Fatal(err)
		}
		if want := []int{1, fixEQ, fixEW}; !cmp.Equal(want, out.Shape) {
			t.Fatalf("shape %v, want %v", out.Shape, want)
		}
		return out.Data
	}
	x0, x1 := ellaFeatures(1, 1, 7), ellaFeatures(2, 1, 7)
	both := nn.Concat(0, x0, x1) // [2, 7, Din]
	ts := []float32{999, 500.5, 1}
	tests := []struct {
		name string
		run  func() (*nn.Tensor, error)
		want [][]float32
	}{
		{"steps of one prompt", func() (*nn.Tensor, error) { return e.ForwardSteps(x0, ts) },
			[][]float32{one(x0, 999), one(x0, 500.5), one(x0, 1)}},
		{"rows with their own t", func() (*nn.Tensor, error) { return e.Forward(both, ts[:2]) },
			[][]float32{one(x0, 999), one(x1, 500.5)}},
		{"rows sharing one t", func() (*nn.Tensor, error) { return e.Forward(both, ts[2:]) },
			[][]float32{one(x0, 1), one(x1, 1)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.run()
			if err != nil {
				t.Fatal(err)
			}
			if got.Dim(0) != len(tc.want) {
				t.Fatalf("batch %d, want %d", got.Dim(0), len(tc.want))
			}
			per := fixEQ * fixEW
			for i, w := range tc.want {
				if d := maxAbsDiff(w, got.Data[i*per:(i+1)*per]); d > 1e-5 {
					t.Errorf("item %d differs from its own call by %g", i, d)
				}
			}
		})
	}
	if d := maxAbsDiff(one(x0, 999), one(x0, 1)); d < 1e-3 {
		t.Errorf("t=999 and t=1 give the same output (diff %g): the timestep is ignored", d)
	}
	if d := maxAbsDiff(one(x0, 500), one(x0, 500.5)); d == 0 || math.IsNaN(d) {
		t.Errorf("fractional t must not be truncated (diff %g)", d)
	}
}

func TestELLAForwardErrors(t *testing.T) {
	e, err := openFixELLA(t, fixELLATensors(5), 0)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		run     func() error
		wantErr string
	}{
		{"wrong feature width", func() error { _, err := e.Forward(nn.New(1, 3, 4), []float32{1}); return err }, "want [B, N>=1, 6]"},
		{"no tokens", func() error { _, err := e.Forward(nn.New(1, 0, fixEDin), []float32{1}); return err }, "want [B, N>=1, 6]"},
		{"rank 2", func() error { _, err := e.Forward(nn.New(3, fixEDin), []float32{1}); return err }, "want [B, N>=1, 6]"},
		{"no timestep", func() error { _, err := e.Forward(nn.New(1, 3, fixEDin), nil); return err }, "0 timesteps"},
		{"rows and timesteps disagree", func() error { _, err := e.Forward(nn.New(2, 3, fixEDin), []float32{1, 2, 3}); return err }, "2 text rows with 3 timesteps"},
		{"steps need one prompt", func() error { _, err := e.ForwardSteps(nn.New(2, 3, fixEDin), []float32{1}); return err }, "one prompt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if !errors.Is(err, ErrELLAShape) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want ErrELLAShape containing %q", err, tc.wantErr)
			}
		})
	}
}
