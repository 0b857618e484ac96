// controlnet_test.go checks the ControlNet file forms (prefixed, bare,
// fp16, diffusers) give the same residuals, the diffusers name table
// against the spec rows, hint caching, and the refusals (SDXL, SD 2.x,
// difference, Control-LoRA, T2I-Adapter, wrong hint sizes).
package models

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// asDiffusers presents an ldm ControlNet source (keys under prefix) under
// diffusers ControlNetModel names, using the forward table.
func asDiffusers(t testing.TB, src Source, prefix string) Source {
	t.Helper()
	toDiff := map[string]string{}
	for _, p := range ControlNetDiffusersTable(4, 2, 6) {
		toDiff[p.LDM] = p.Diffusers
	}
	r := &renamedSource{src: src, toStored: map[string]string{}}
	for _, n := range src.Names() {
		k, ok := strings.CutPrefix(n, prefix)
		if !ok {
			continue
		}
		d := renamePrefix(k, toDiff)
		if d == k {
			t.Fatalf("no diffusers name for %q", k)
		}
		r.toStored[d] = n
		r.names = append(r.names, d)
	}
	return r
}

// withPrefix presents src with every key prefixed by p.
func withPrefix(src Source, p string) Source {
	r := &renamedSource{src: src, toStored: map[string]string{}}
	for _, n := range src.Names() {
		r.toStored[p+n] = n
		r.names = append(r.names, p+n)
	}
	return r
}

func TestControlNetDiffusersTable(t *testing.T) {
	// Rows of specs/controlnet.md §3.2 (diffusers single_file_utils.py
	// convert_controlnet_checkpoint) for SD 1.5.
	want := map[string]string{
		"time_embed.0":                     "time_embedding.linear_1",
		"time_embed.2":                     "time_embedding.linear_2",
		"input_blocks.0.0":                 "conv_in",
		"input_blocks.1.0.in_layers.0":     "down_blocks.0.resnets.0.norm1",
		"input_blocks.2.1":                 "down_blocks.0.attentions.1",
		"input_blocks.3.0.op":              "down_blocks.0.downsamplers.0.conv",
		"input_blocks.4.0.skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
		"input_blocks.8.0.emb_layers.1":    "down_blocks.2.resnets.1.time_emb_proj",
		"input_blocks.9.0.op":              "down_blocks.2.downsamplers.0.conv",
		"input_blocks.11.0.out_layers.3":   "down_blocks.3.resnets.1.conv2",
		"middle_block.0.in_layers.2":       "mid_block.resnets.0.conv1",
		"middle_block.1":                   "mid_block.attentions.0",
		"middle_block.2.out_layers.0":      "mid_block.resnets.1.norm2",
		"input_hint_block.0":               "controlnet_cond_embedding.conv_in",
		"input_hint_block.2":               "controlnet_cond_embedding.blocks.0",
		"input_hint_block.12":              "controlnet_cond_embedding.blocks.5",
		"input_hint_block.14":              "controlnet_cond_embedding.conv_out",
		"zero_convs.0.0":                   "controlnet_down_blocks.0",
		"zero_convs.11.0":                  "controlnet_down_blocks.11",
		"middle_block_out.0":               "controlnet_mid_block",
	}
	table := ControlNetDiffusersTable(4, 2, 6)
	got := map[string]string{}
	seen := map[string]bool{}
	for _, p := range table {
		if _, dup := got[p.LDM]; dup {
			t.Errorf("ldm name %q listed twice", p.LDM)
		}
		if seen[p.Diffusers] {
			t.Errorf("diffusers name %q listed twice", p.Diffusers)
		}
		got[p.LDM], seen[p.Diffusers] = p.Diffusers, true
	}
	for ldm, diff := range want {
		if got[ldm] != diff {
			t.Errorf("%s -> %q, want %q", ldm, got[ldm], diff)
		}
	}
	// Blocks 3, 6, 9 are Downsamples: no res block names for them.
	for _, n := range []string{"input_blocks.3.0.in_layers.0", "input_blocks.6.1", "input_blocks.9.0.in_layers.2"} {
		if d, ok := got[n]; ok {
			t.Errorf("%s is not a res/attention block but maps to %q", n, d)
		}
	}
}

// tinyControlNetFile writes a random bare ControlNet with the tiny layout.
func tinyControlNetFile(t *testing.T, dt safetensors.DType) *safetensors.File {
	t.Helper()
	return writeTiny(t, controlNetSpecs(Tiny(1000), dt, ""), 7)
}

func TestLoadControlNetForms(t *testing.T) {
	bare := tinyControlNetFile(t, safetensors.F32)
	half := tinyControlNetFile(t, safetensors.F16) // same draws, rounded to fp16
	// A 16x16 latent: at 8x8 the middle block is 1x1 and its GroupNorms
	// (2 values per group) amplify fp16 rounding of the weights to a few %.
	x, ts, ctx, hint := ramp(2, 4, 16, 16), []float32{500, 12.5}, ramp(2, 77, 128), ramp(2, 3, 128, 128)
	ref, layout, err := LoadControlNet(bare)
	if err != nil {
		t.Fatal(err)
	}
	if layout != ControlNetBare || len(ref.Unused) != 0 {
		t.Errorf("bare file: layout %q, unused %v", layout, ref.Unused)
	}
	want, err := ref.Forward(x, hint, ts, ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != 13 {
		t.Fatalf("%d residuals, want 13", len(want))
	}
	tests := []struct {
		name   string
		src    Source
		layout ControlNetLayout
		tol    float64
	}{
		{"control_model prefix", withPrefix(bare, "control_model."), ControlNetLDM, 0},
		{"full ControlLDM", withPrefix(bare, "control_model."), ControlNetLDM, 0},
		{"diffusers", asDiffusers(t, bare, ""), ControlNetDiffusers, 0},
		{"fp16 bare", half, ControlNetBare, 1e-2},
		{"fp16 diffusers", asDiffusers(t, half, ""), ControlNetDiffusers, 1e-2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, layout, err := LoadControlNet(tt.src)
			if err != nil {
				t.Fatal(err)
			}
			if layout != tt.layout {
				t.Errorf("layout %q, want %q", layout, tt.layout)
			}
			if len(c.Unused) != 0 {
				t.Errorf("unused keys: %v", c.Unused)
			}
			got, err := c.Forward(x, hint, ts, ctx)
			if err != nil {
				t.Fatal(err)
			}
			for name, w := range want {
				if d := relDiff(got[name], w); d > tt.tol {
					t.Errorf("residual %s differs by %g (tolerance %g)", name, d, tt.tol)
				}
			}
		})
	}
}

func TestControlNetHintReuse(t *testing.T) {
	c, _, err := LoadControlNet(tinyControlNetFile(t, safetensors.F32))
	if err != nil {
		t.Fatal(err)
	}
	x, ts, ctx := ramp(2, 4, 8, 8), []float32{999, 0}, ramp(2, 64, 128)
	one := ramp(1, 3, 64, 64)
	both := nn.Concat(0, one, one) // [2, 3, 64, 64]
	want, err := c.Forward(x, both, ts, ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Encode once (batch 1, broadcast), reuse: same residuals.
	g, err := c.HintEncode(one)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{1, 32, 8, 8}, g.Shape); diff != "" {
		t.Errorf("encoded hint shape (-want +got):\n%s", diff)
	}
	got, err := c.ForwardEncoded(x, g, ts, ctx)
	if err != nil {
		t.Fatal(err)
	}
	for name, w := range want {
		if d := relDiff(got[name], w); d != 0 {
			t.Errorf("residual %s differs by %g with a reused, broadcast hint", name, d)
		}
	}
}

func TestControlNetRejects(t *testing.T) {
	c, _, err := LoadControlNet(tinyControlNetFile(t, safetensors.F32))
	if err != nil {
		t.Fatal(err)
	}
	x, ts, ctx := ramp(2, 4, 8, 8), []float32{999, 0}, ramp(2, 77, 128)
	tests := []struct {
		name    string
		hint    *nn.Tensor
		message string
	}{
		{"hint at latent size", ramp(2, 3, 8, 8), "must be exactly 8x the latent (64x64 px)"},
		{"hint twice too large", ramp(2, 3, 128, 128), "must be exactly 8x the latent"},
		{"hint not a multiple of 8", ramp(2, 3, 60, 60), "hint is 60x60, want a multiple of 8"},
		{"grey hint", ramp(2, 1, 64, 64), "hint has shape [2 1 64 64], want [B, 3, H, W]"},
		{"hint batch 3", ramp(3, 3, 64, 64), "encoded hint has shape [3 32 8 8]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Forward(x, tt.hint, ts, ctx)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error %q does not mention %q", err, tt.message)
			}
		})
	}
	t.Run("ControlNet of another U-Net", func(t *testing.T) {
		sd15, err := InferUNetConfig(NewWeights(newShapeSource(unetSpecs(SD15(), safetensors.F16))).Sub(unetPrefix))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.CheckCompatible(sd15); err == nil || !strings.Contains(err.Error(), "context width 128, the U-Net uses 768") {
			t.Errorf("CheckCompatible = %v", err)
		}
		if err := c.CheckCompatible(c.Config); err != nil {
			t.Errorf("CheckCompatible with its own config: %v", err)
		}
	})
}

func TestLoadControlNetRefuses(t *testing.T) {
	sd15 := controlNetSpecs(SD15(), safetensors.F16, "control_model.")
	tiny := controlNetSpecs(Tiny(1000), safetensors.F32, "control_model.")
	sdxl := SD15()
	sdxl.ContextDim = 2048
	sd2 := SD15()
	sd2.ContextDim = 1024
	tests := []struct {
		name    string
		specs   []safetensors.Spec
		notSD1  bool
		message string
		data    bool // bind from a random file (the error is found while binding)
	}{
		{"sdxl label_emb", withSpec(controlNetSpecs(sdxl, safetensors.F16, "control_model."), "control_model.label_emb.0.0.weight", 1280, 2816), true, `"control_model.label_emb.0.0.weight" is present`, false},
		{"sdxl context", controlNetSpecs(sdxl, safetensors.F16, ""), true, "context width 2048 (SDXL)", false},
		{"sd2 context", controlNetSpecs(sd2, safetensors.F16, ""), true, "context width 1024 (SD 2.x", false},
		{"sdxl diffusers", withSpec(withSpec(nil, "controlnet_cond_embedding.conv_in.weight", 16, 3, 3, 3), "add_embedding.linear_1.weight", 1280, 2816), true, "add_embedding", false},
		{"difference", withSpec(sd15, "difference", 1), false, `"difference" ControlNet`, false},
		{"control-lora", withSpec(sd15, "lora_controlnet", 1), false, "Control-LoRA", false},
		{"t2i-adapter", []safetensors.Spec{{Name: "body.0.block1.weight", DType: safetensors.F16, Shape: []int{320, 320, 3, 3}}}, false, "T2I-Adapter", false},
		{"a U-Net checkpoint", unetSpecs(SD15(), safetensors.F16), false, "no ControlNet tensors", false},
		{"missing hint conv", withoutSpec(t, tiny, "control_model.input_hint_block.8.weight"), false, `missing tensor "control_model.input_hint_block.8.weight"`, true},
		{"missing zero conv", withoutSpec(t, tiny, "control_model.zero_convs.7.0.weight"), false, `missing tensor "control_model.zero_convs.7.0.weight"`, true},
		{"missing middle_block_out", withoutSpec(t, tiny, "control_model.middle_block_out.0.bias"), false, `missing tensor "control_model.middle_block_out.0.bias"`, true},
		{"hint output width", withShape(t, tiny, "control_model.input_hint_block.14.weight", 256, 256, 3, 3), false, `"control_model.input_hint_block.14.weight" has shape [256 256 3 3], want [32 256 3 3]`, true},
		{"zero conv width", withShape(t, tiny, "control_model.zero_convs.4.0.weight", 32, 32, 1, 1), false, `"control_model.zero_convs.4.0.weight" has shape [32 32 1 1], want [64 64 1 1]`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Shapes only unless the row needs data: the real-size rows fail
			// before any tensor is read.
			var src Source = newShapeSource(tt.specs)
			if tt.data {
				src = writeTiny(t, tt.specs, 3)
			}
			_, _, err := LoadControlNet(src)
			if err == nil {
				t.Fatal("accepted")
			}
			if errors.Is(err, ErrNotSD1) != tt.notSD1 {
				t.Errorf("errors.Is(err, ErrNotSD1) = %v, want %v (err: %v)", !tt.notSD1, tt.notSD1, err)
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error %q does not mention %q", err, tt.message)
			}
		})
	}
}

func ExampleInputBlockResidual() {
	fmt.Println(InputBlockResidual(11), MiddleBlockResidual)
	// Output: input_blocks.11 middle_block
}
