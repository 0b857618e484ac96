// unet_test.go binds tiny random U-Nets (golden tiny layout): strict
// binding errors name the key, Forward refuses bad inputs clearly, and each
// named residual reaches the output. Benchmarks time the tiny forward pass.
package models

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

const unetPrefix = "model.diffusion_model."

// tinyUNet binds a random U-Net with the golden tiny layout.
func tinyUNet(t *testing.T) *UNet {
	t.Helper()
	f := writeTiny(t, unetSpecs(Tiny(1000), safetensors.F32), 1)
	u, err := LoadUNet(NewWeights(f).Sub(unetPrefix))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// ramp is a deterministic tensor with values in [-1, 1).
func ramp(shape ...int) *nn.Tensor {
	x := nn.New(shape...)
	for i := range x.Data {
		x.Data[i] = float32(math.Sin(float64(i) * 0.37))
	}
	return x
}

func TestLoadUNetTiny(t *testing.T) {
	u := tinyUNet(t)
	if len(u.InputBlocks) != 12 || len(u.OutputBlocks) != 12 {
		t.Errorf("%d input and %d output blocks, want 12 and 12", len(u.InputBlocks), len(u.OutputBlocks))
	}
	if len(u.Unused) != 0 {
		t.Errorf("unused keys: %v", u.Unused)
	}
	// Upsamplers sit at index 1 in output block 2 (no attention on the
	// deepest level) and at index 2 in blocks 5 and 8.
	for _, k := range []struct{ block, layer int }{{2, 1}, {5, 2}, {8, 2}} {
		if _, ok := u.OutputBlocks[k.block].Layers[k.layer].(*Upsample); !ok {
			t.Errorf("output_blocks.%d.%d is %T, want *Upsample", k.block, k.layer, u.OutputBlocks[k.block].Layers[k.layer])
		}
	}
}

func TestNewUNetBindErrors(t *testing.T) {
	specs := unetSpecs(Tiny(1000), safetensors.F32)
	tests := []struct {
		name    string
		specs   []safetensors.Spec
		message string
	}{
		{"missing attention weight", withoutSpec(t, specs, unetPrefix+"output_blocks.7.1.transformer_blocks.0.attn2.to_v.weight"),
			`missing tensor "` + unetPrefix + `output_blocks.7.1.transformer_blocks.0.attn2.to_v.weight"`},
		{"missing upsampler", withoutSpec(t, specs, unetPrefix+"output_blocks.2.1.conv.bias"),
			`missing tensor "` + unetPrefix + `output_blocks.2.1.conv.bias"`},
		{"missing skip conv", withoutSpec(t, specs, unetPrefix+"output_blocks.0.0.skip_connection.weight"),
			`missing tensor "` + unetPrefix + `output_blocks.0.0.skip_connection.weight"`},
		{"mis-shaped ff", withShape(t, specs, unetPrefix+"middle_block.1.transformer_blocks.0.ff.net.2.weight", 64, 64),
			`tensor "` + unetPrefix + `middle_block.1.transformer_blocks.0.ff.net.2.weight" has shape [64 64], want [64 256]`},
		{"mis-shaped norm", withShape(t, specs, unetPrefix+"out.0.weight", 64),
			`tensor "` + unetPrefix + `out.0.weight" has shape [64], want [32]`},
		{"identity skip with weights", withSpec(specs, unetPrefix+"input_blocks.1.0.skip_connection.weight", 32, 32, 1, 1),
			`unexpected tensor "` + unetPrefix + `input_blocks.1.0.skip_connection.weight"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := writeTiny(t, tt.specs, 1)
			_, err := LoadUNet(NewWeights(f).Sub(unetPrefix))
			if err == nil {
				t.Fatal("bound")
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error %q does not mention %q", err, tt.message)
			}
		})
	}
}

func TestUNetForwardRejectsBadInputs(t *testing.T) {
	u := tinyUNet(t)
	x, ts, ctx := ramp(2, 4, 8, 8), []float32{999, 1.5}, ramp(2, 77, 128)
	tests := []struct {
		name    string
		x       *nn.Tensor
		ts      []float32
		ctx     *nn.Tensor
		res     Residuals
		message string
	}{
		{"9 channels into a 4-channel U-Net", ramp(2, 9, 8, 8), ts, ctx, nil, "x has shape [2 9 8 8], want [B, 4, H, W]"},
		{"empty latent", ramp(2, 4, 0, 8), ts, ctx, nil, "latent 0x8 is empty"},
		{"one timestep for two rows", x, ts[:1], ctx, nil, "1 timesteps for a batch of 2"},
		{"context width", x, ts, ramp(2, 77, 768), nil, "context has shape [2 77 768], want [2, L, 128]"},
		{"context batch", x, ts, ramp(1, 77, 128), nil, "context has shape [1 77 128]"},
		{"unknown residual", x, ts, ctx, Residuals{"input_blocks.12": ramp(2, 64, 1, 1)}, `unknown residual "input_blocks.12"`},
		{"positional residual name", x, ts, ctx, Residuals{"0": ramp(2, 32, 8, 8)}, `unknown residual "0"`},
		{"residual shape", x, ts, ctx, Residuals{"input_blocks.3": ramp(2, 32, 8, 8)}, `residual "input_blocks.3" has shape [2 32 8 8], the U-Net activation is [2 32 4 4]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := u.Forward(tt.x, tt.ts, tt.ctx, tt.res)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error %q does not mention %q", err, tt.message)
			}
		})
	}
}

// relDiff is ||a-b|| / ||b||.
func relDiff(a, b *nn.Tensor) float64 {
	var num, den float64
	for i := range a.Data {
		d := float64(a.Data[i] - b.Data[i])
		num += d * d
		den += float64(b.Data[i]) * float64(b.Data[i])
	}
	return math.Sqrt(num / den)
}

func TestUNetResiduals(t *testing.T) {
	u := tinyUNet(t)
	// Any context length works (77 CLIP, 64 ELLA, 141 both).
	x, ts, ctx := ramp(2, 4, 8, 8), []float32{999, 0.25}, ramp(2, 141, 128)
	base, err := u.Forward(x, ts, ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if base.Shape[0] != 2 || base.Shape[1] != 4 || base.Shape[2] != 8 || base.Shape[3] != 8 {
		t.Fatalf("eps shape %v", base.Shape)
	}
	// Residual shapes of the tiny U-Net for an 8x8 latent, by name.
	shapes := map[string][]int{MiddleBlockResidual: {2, 64, 1, 1}}
	for i, s := range [][]int{{32, 8}, {32, 8}, {32, 8}, {32, 4}, {64, 4}, {64, 4}, {64, 2}, {64, 2}, {64, 2}, {64, 1}, {64, 1}, {64, 1}} {
		shapes[InputBlockResidual(i)] = []int{2, s[0], s[1], s[1]}
	}
	if diff := cmp.Diff(shapes, ResidualShapes(u.Config, 2, 8, 8)); diff != "" {
		t.Errorf("ResidualShapes (-want +got):\n%s", diff)
	}
	zeros := Residuals{}
	for name, s := range shapes {
		zeros[name] = nn.New(s...)
	}
	got, err := u.Forward(x, ts, ctx, zeros)
	if err != nil {
		t.Fatal(err)
	}
	if d := relDiff(got, base); d != 0 {
		t.Errorf("all-zero residuals changed eps by %g", d)
	}
	// Each single residual reaches the output, and the inputs are untouched.
	for name, s := range shapes {
		r := ramp(s...)
		keep := r.Clone()
		got, err := u.Forward(x, ts, ctx, Residuals{name: r})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if d := relDiff(got, base); d < 1e-4 {
			t.Errorf("residual %s changed eps by only %g", name, d)
		}
		if relDiff(r, keep) != 0 {
			t.Errorf("residual %s was modified by Forward", name)
		}
	}
}

func BenchmarkUNetForwardTiny(b *testing.B) {
	f := writeTiny(b, unetSpecs(Tiny(1000), safetensors.F32), 1)
	u, err := LoadUNet(NewWeights(f).Sub(unetPrefix))
	if err != nil {
		b.Fatal(err)
	}
	x, ts, ctx := ramp(2, 4, 16, 16), []float32{999, 500}, ramp(2, 77, 128)
	b.SetBytes(int64(4 * x.Numel())) // latent bytes denoised per op
	b.ReportAllocs()
	for b.Loop() {
		if _, err := u.Forward(x, ts, ctx, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkControlNetTiny compares a step that re-encodes the hint with one
// that reuses HintEncode's result.
func BenchmarkControlNetTiny(b *testing.B) {
	f := writeTiny(b, controlNetSpecs(Tiny(1000), safetensors.F32, ""), 7)
	c, _, err := LoadControlNet(f)
	if err != nil {
		b.Fatal(err)
	}
	x, ts, ctx, hint := ramp(2, 4, 16, 16), []float32{999, 500}, ramp(2, 77, 128), ramp(1, 3, 128, 128)
	b.Run("hint-every-step", func(b *testing.B) {
		b.SetBytes(int64(4 * x.Numel()))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Forward(x, hint, ts, ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("hint-cached", func(b *testing.B) {
		g, err := c.HintEncode(hint)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(4 * x.Numel()))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.ForwardEncoded(x, g, ts, ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
