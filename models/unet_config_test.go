// unet_config_test.go pins U-Net config inference on real SD 1.5 shapes
// (shapes only, nothing allocated) and the refusal of other architectures
// and of malformed files, by the key at fault.
package models

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdbridge/sdbridge/safetensors"
)

func TestInferUNetConfig(t *testing.T) {
	inpaint := SD15()
	inpaint.InChannels = 9
	sd15 := UNetConfig{
		InChannels: 4, OutChannels: 4, ModelChannels: 320, ChannelMult: []int{1, 2, 4, 4}, NumResBlocks: 2,
		Attention: []bool{true, true, true, false}, TransformerDepth: 1, ContextDim: 768, NumHeads: 8,
	}
	sd15Inpaint := sd15
	sd15Inpaint.InChannels = 9
	tests := []struct {
		name   string
		layout Layout
		want   UNetConfig
	}{
		{"sd15", SD15(), sd15},
		{"sd15-inpainting", inpaint, sd15Inpaint},
		{"golden-tiny", Tiny(1000), UNetConfig{
			InChannels: 4, OutChannels: 4, ModelChannels: 32, ChannelMult: []int{1, 2, 2, 2}, NumResBlocks: 2,
			Attention: []bool{true, true, true, false}, TransformerDepth: 1, ContextDim: 128, NumHeads: 8,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Shapes only: the real-size U-Net is never allocated.
			src := newShapeSource(unetSpecs(tt.layout, safetensors.F16))
			got, err := InferUNetConfig(NewWeights(src).Sub("model.diffusion_model."))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
			if n := got.NumInputBlocks(); n != 12 {
				t.Errorf("NumInputBlocks = %d, want 12", n)
			}
		})
	}
}

// linearProj turns every proj_in/proj_out 1x1 conv weight into a Linear
// weight, as SD 2.x stores them.
func linearProj(specs []safetensors.Spec) []safetensors.Spec {
	out := renamed(specs, func(s string) string { return s })
	for i, s := range out {
		if (strings.HasSuffix(s.Name, ".proj_in.weight") || strings.HasSuffix(s.Name, ".proj_out.weight")) && len(s.Shape) == 4 {
			out[i].Shape = s.Shape[:2]
		}
	}
	return out
}

// deeper adds a second transformer block to every SpatialTransformer whose
// key starts with prefix (under the U-Net prefix).
func deeper(specs []safetensors.Spec, prefix string) []safetensors.Spec {
	out := renamed(specs, func(s string) string { return s })
	for _, s := range specs {
		if strings.HasPrefix(s.Name, "model.diffusion_model."+prefix) && strings.Contains(s.Name, ".transformer_blocks.0.") {
			out = append(out, safetensors.Spec{Name: strings.Replace(s.Name, ".transformer_blocks.0.", ".transformer_blocks.1.", 1), DType: s.DType, Shape: s.Shape})
		}
	}
	return out
}

func TestInferUNetConfigRefuses(t *testing.T) {
	const p = "model.diffusion_model."
	sd15 := unetSpecs(SD15(), safetensors.F16)
	sd2 := SD15()
	sd2.ContextDim = 1024
	sdxlCtx := SD15()
	sdxlCtx.ContextDim = 2048
	threeLevels := SD15()
	threeLevels.ChannelMult = []int{1, 2, 4}
	threeLevels.AttnLevels = []bool{false, true, true}
	pix2pix := SD15()
	pix2pix.InChannels = 8
	tests := []struct {
		name    string
		specs   []safetensors.Spec
		notSD1  bool   // errors.Is(err, ErrNotSD1)
		message string // substring of the error
	}{
		{"sd2 context 1024 + linear proj", linearProj(unetSpecs(sd2, safetensors.F16)), true, "1024 (SD 2.x"},
		{"linear proj (SD 2.x style)", linearProj(sd15), true, "linear layers (SD 2.x style)"},
		{"sdxl label_emb", withSpec(unetSpecs(sdxlCtx, safetensors.F16), p+"label_emb.0.0.weight", 1280, 2816), true, p + "label_emb.0.0.weight"},
		{"sdxl context 2048", unetSpecs(sdxlCtx, safetensors.F16), true, "context width 2048 (SDXL)"},
		{"three levels", unetSpecs(threeLevels, safetensors.F16), true, "3 levels x 2 res blocks"},
		{"depth 2 everywhere", deeper(sd15, ""), true, "transformer depth 2"},
		{"depth 2 in the middle only", deeper(sd15, "middle_block"), true, "per-level depth"},
		{"8 input channels", unetSpecs(pix2pix, safetensors.F16), true, "8 input channels"},
		{"missing time_embed", withoutSpec(t, sd15, p+"time_embed.0.weight"), false, `missing tensor "` + p + `time_embed.0.weight"`},
		{"missing out conv", withoutSpec(t, sd15, p+"out.2.weight"), false, `missing tensor "` + p + `out.2.weight"`},
		{"missing res block", withoutSpec(t, sd15, p+"input_blocks.4.0.in_layers.2.weight"), false, p + "input_blocks.4.0.in_layers.2.weight"},
		{"conv_in rank", withShape(t, sd15, p+"input_blocks.0.0.weight", 320, 4, 9), false, `"` + p + `input_blocks.0.0.weight" has shape [320 4 9], want 4 dimensions`},
		{"time_embed width", withShape(t, sd15, p+"time_embed.0.weight", 1024, 320), false, `"` + p + `time_embed.0.weight" has shape [1024 320], want [1280, 320]`},
		{"no U-Net", nil, false, `missing tensor "` + p + `input_blocks.0.0.weight"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := InferUNetConfig(NewWeights(newShapeSource(tt.specs)).Sub(p))
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

func TestResidualNames(t *testing.T) {
	cfg, err := InferUNetConfig(NewWeights(newShapeSource(unetSpecs(SD15(), safetensors.F16))).Sub("model.diffusion_model."))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"input_blocks.0", "input_blocks.1", "input_blocks.2", "input_blocks.3", "input_blocks.4", "input_blocks.5",
		"input_blocks.6", "input_blocks.7", "input_blocks.8", "input_blocks.9", "input_blocks.10", "input_blocks.11",
		"middle_block",
	}
	if diff := cmp.Diff(want, ResidualNames(cfg)); diff != "" {
		t.Errorf("ResidualNames (-want +got):\n%s", diff)
	}
}

func TestResidualShapesSD15(t *testing.T) {
	cfg, err := InferUNetConfig(NewWeights(newShapeSource(unetSpecs(SD15(), safetensors.F16))).Sub("model.diffusion_model."))
	if err != nil {
		t.Fatal(err)
	}
	// specs/controlnet.md §2 at 512x512 (latent 64), plus an odd-level case
	// (latent 72x40: 36x20, 18x10, 9x5).
	got := ResidualShapes(cfg, 2, 64, 64)
	total := 0
	for _, s := range got {
		total += s[1] * s[2] * s[3]
	}
	if total != 6717440 {
		t.Errorf("residual elements per image at 512x512 = %d, want 6717440", total)
	}
	for name, want := range map[string][]int{
		"input_blocks.0": {2, 320, 64, 64}, "input_blocks.3": {2, 320, 32, 32}, "input_blocks.4": {2, 640, 32, 32},
		"input_blocks.6": {2, 640, 16, 16}, "input_blocks.7": {2, 1280, 16, 16}, "input_blocks.11": {2, 1280, 8, 8},
		"middle_block": {2, 1280, 8, 8},
	} {
		if diff := cmp.Diff(want, got[name]); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
	if diff := cmp.Diff([]int{1, 1280, 9, 5}, ResidualShapes(cfg, 1, 72, 40)["middle_block"]); diff != "" {
		t.Errorf("middle_block at 72x40 (-want +got):\n%s", diff)
	}
}
