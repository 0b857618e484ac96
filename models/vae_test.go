// vae_test.go tests VAE layout detection, config inference, strict binding
// errors, the alternative mid-attention spellings, the asymmetric
// downsample pad and input checks, on small generated files (the numeric
// check against the reference is golden/run_vae_*_test.go).
package models

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdbridge/sdbridge/nn"
)

func TestDetectVAEPrefix(t *testing.T) {
	vae := vcComponent("first_stage_model.")
	diffusers := []vcTensor{
		{Name: "decoder.conv_in.weight", Shape: []int{1}, F32: []float32{0}},
		{Name: "decoder.up_blocks.0.resnets.0.conv1.weight", Shape: []int{1}, F32: []float32{0}},
	}
	tests := []struct {
		name    string
		ts      []vcTensor
		want    string
		wantErr string // substring; "" means success
		noVAE   bool   // errors.Is(err, ErrNoVAE)
	}{
		{name: "single-file checkpoint", ts: vcPrefixed("first_stage_model.", vae), want: "first_stage_model."},
		{name: "standalone VAE", ts: vae, want: ""},
		{name: "standalone VAE with loss keys", ts: append(vcPrefixed("", vae), vcTensor{Name: "loss.logvar", Shape: []int{}, F32: []float32{0}}), want: ""},
		{name: "checkpoint without VAE", ts: vcPrefixed("cond_stage_model.transformer.text_model.", vcComponent("cond_stage_model.transformer.text_model.")), wantErr: "no VAE", noVAE: true},
		{name: "diffusers VAE", ts: diffusers, wantErr: "diffusers layout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DetectVAEPrefix(NewWeights(vcOpen(t, tc.ts)))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
				}
				if got := errors.Is(err, ErrNoVAE); got != tc.noVAE {
					t.Errorf("errors.Is(err, ErrNoVAE) = %v, want %v", got, tc.noVAE)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("prefix = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLoadVAEInfersConfig(t *testing.T) {
	f := vcOpen(t, vcPrefixed("first_stage_model.", vcComponent("first_stage_model.")))
	w := NewWeights(f)
	v, err := LoadVAE(w, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := VAEConfig{Ch: 32, ChMult: []int{1, 2}, NumResBlocks: 1, AttnLevels: []bool{false, false},
		ZChannels: 4, EmbedDim: 4, InChannels: 3, OutChannels: 3, ScaleFactor: DefaultVAEScaleFactor}
	if d := cmp.Diff(want, v.Config); d != "" {
		t.Errorf("config (-want +got):\n%s", d)
	}
	if u := w.Sub("first_stage_model.").Unused(); len(u) != 0 {
		t.Errorf("unused VAE keys: %v", u)
	}
}

func TestLoadVAEErrorsNameTheKey(t *testing.T) {
	base := vcPrefixed("first_stage_model.", vcComponent("first_stage_model."))
	tests := []struct {
		name    string
		edit    func(t *vcTensor) bool
		decoder bool   // LoadVAEDecoder instead of LoadVAE
		key     string // the key the error must name
	}{
		{name: "missing decoder norm", key: "first_stage_model.decoder.up.1.block.0.norm2.weight",
			edit: func(t *vcTensor) bool { return t.Name != "first_stage_model.decoder.up.1.block.0.norm2.weight" }},
		{name: "missing encoder downsample", key: "first_stage_model.encoder.down.0.downsample.conv.bias",
			edit: func(t *vcTensor) bool { return t.Name != "first_stage_model.encoder.down.0.downsample.conv.bias" }},
		{name: "missing mid attention", key: "first_stage_model.decoder.mid.attn_1.k.weight",
			edit: func(t *vcTensor) bool { return t.Name != "first_stage_model.decoder.mid.attn_1.k.weight" }},
		{name: "missing decoder conv_out", key: "first_stage_model.decoder.conv_out.weight",
			edit: func(t *vcTensor) bool { return t.Name != "first_stage_model.decoder.conv_out.weight" }},
		{name: "missing quant_conv", key: "first_stage_model.quant_conv.weight",
			edit: func(t *vcTensor) bool { return t.Name != "first_stage_model.quant_conv.weight" }},
		{name: "mis-shaped shortcut", key: "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
			edit: func(t *vcTensor) bool {
				if t.Name == "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight" {
					t.Shape, t.F32 = []int{64, 32, 3, 1}, make([]float32, 64*32*3)
				}
				return true
			}},
		{name: "mis-shaped decoder conv1", decoder: true, key: "first_stage_model.decoder.up.0.block.0.conv1.weight",
			edit: func(t *vcTensor) bool {
				if t.Name == "first_stage_model.decoder.up.0.block.0.conv1.weight" {
					t.Shape, t.F32 = []int{32, 32, 3, 3}, make([]float32, 32*32*9)
				}
				return true
			}},
		{name: "mis-shaped attention projection", decoder: true, key: "first_stage_model.decoder.mid.attn_1.v.weight",
			edit: func(t *vcTensor) bool {
				if t.Name == "first_stage_model.decoder.mid.attn_1.v.weight" {
					t.Shape = []int{64, 32, 2, 1}
				}
				return true
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWeights(vcOpen(t, vcEdit(base, tc.edit)))
			load := LoadVAE
			if tc.decoder {
				load = LoadVAEDecoder
			}
			_, err := load(w, 0)
			if err == nil || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err = %v, want it to name %q", err, tc.key)
			}
		})
	}
}

// TestVAEMidAttentionSpellings checks that q/k/v/proj_out stored as 2-D
// Linear weights, under the diffusers-converted names, decode exactly like
// the ldm 1x1-conv weights.
func TestVAEMidAttentionSpellings(t *testing.T) {
	base := vcComponent("first_stage_model.")
	rename := map[string]string{"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0", "norm": "group_norm"}
	old := map[string]string{"q": "query", "k": "key", "v": "value", "proj_out": "proj_attn"}
	respell := func(names map[string]string, flat bool) []vcTensor {
		return vcEdit(base, func(t *vcTensor) bool {
			for _, part := range []string{"encoder.mid.attn_1.", "decoder.mid.attn_1."} {
				rest, ok := strings.CutPrefix(t.Name, part)
				if !ok {
					continue
				}
				role, suffix, _ := strings.Cut(rest, ".")
				if n, ok := names[role]; ok {
					t.Name = part + n + "." + suffix
				}
				if flat && len(t.Shape) == 4 {
					t.Shape = t.Shape[:2]
				}
			}
			return true
		})
	}
	latent := nn.New(1, 4, 3, 2) // [1, 4, 3, 2]
	for i := range latent.Data {
		latent.Data[i] = float32(math.Sin(float64(i)))
	}
	decode := func(t *testing.T, ts []vcTensor) *nn.Tensor {
		v, err := LoadVAE(NewWeights(vcOpen(t, ts)), 0)
		if err != nil {
			t.Fatal(err)
		}
		img, err := v.Decode(latent)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	want := decode(t, base)
	tests := []struct {
		name string
		ts   []vcTensor
	}{
		{"ldm names, 2-D weights", respell(nil, true)},
		{"to_q names, 2-D weights", respell(rename, true)},
		{"query names, 4-D weights", respell(old, false)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := decode(t, tc.ts)
			if d := cmp.Diff(want.Data, got.Data); d != "" {
				t.Errorf("decode differs from the ldm layout (-want +got):\n%s", d)
			}
		})
	}
}

// TestVAEDownsamplePadsRightAndBottom checks ldm's asymmetric (0, 1, 0, 1)
// pad: with a 3x3 all-ones kernel on a 4x4 all-ones image, the top-left
// output sees 9 pixels, the right and bottom edges see the zero pad.
func TestVAEDownsamplePadsRightAndBottom(t *testing.T) {
	ones := func(shape ...int) *nn.Tensor {
		x := nn.New(shape...)
		for i := range x.Data {
			x.Data[i] = 1
		}
		return x
	}
	d := &VAEDownsample{Conv: &nn.Conv2d{Weight: ones(1, 1, 3, 3), Bias: nn.New(1), Stride: 2}}
	got := d.Forward(ones(1, 1, 4, 4)) // [1, 1, 2, 2]
	want := []float32{9, 6, 6, 4}
	if d := cmp.Diff([]int{1, 1, 2, 2}, got.Shape); d != "" {
		t.Fatalf("shape (-want +got):\n%s", d)
	}
	if d := cmp.Diff(want, got.Data); d != "" {
		t.Errorf("values (-want +got):\n%s", d)
	}
}

func TestVAEShapesAndInputChecks(t *testing.T) {
	v, err := LoadVAE(NewWeights(vcOpen(t, vcComponent("first_stage_model."))), 0.5)
	if err != nil {
		t.Fatal(err)
	}
	img := nn.New(2, 3, 6, 4) // [2, 3, 6, 4]
	for i := range img.Data {
		img.Data[i] = float32(math.Cos(float64(i))) * 0.9
	}
	lat, err := v.Encode(img)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]int{2, 4, 3, 2}, lat.Shape); d != "" {
		t.Errorf("Encode shape (-want +got):\n%s", d)
	}
	in := lat.Clone()
	out, err := v.Decode(lat)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]int{2, 3, 6, 4}, out.Shape); d != "" {
		t.Errorf("Decode shape (-want +got):\n%s", d)
	}
	if d := cmp.Diff(in.Data, lat.Data); d != "" {
		t.Errorf("Decode modified its input (-before +after):\n%s", d)
	}
	bad := []struct {
		name string
		run  func() error
		want string
	}{
		{"latent channels", func() error { _, err := v.Decode(nn.New(1, 3, 2, 2)); return err }, "latent has shape"},
		{"latent rank", func() error { _, err := v.Decode(nn.New(4, 2, 2)); return err }, "latent must be"},
		{"image channels", func() error { _, err := v.Encode(nn.New(1, 4, 4, 4)); return err }, "image has shape"},
		{"image size", func() error { _, err := v.Encode(nn.New(1, 3, 5, 4)); return err }, "not a multiple of 2"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
	dec, err := LoadVAEDecoder(NewWeights(vcOpen(t, vcComponent("first_stage_model."))), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dec.Encode(img); err == nil {
		t.Error("Encode on a decoder-only VAE succeeded")
	}
}
