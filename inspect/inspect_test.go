package inspect

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/safetensors"
)

// writeZero writes a file with the given tensors, all zero bytes.
func writeZero(t *testing.T, name string, specs []safetensors.Spec) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	var ts []safetensors.TensorData
	for _, s := range specs {
		n := s.DType.Size()
		for _, d := range s.Shape {
			n *= d
		}
		ts = append(ts, safetensors.TensorData{Spec: s, Data: make([]byte, n)})
	}
	if err := safetensors.WriteFile(p, ts, nil); err != nil {
		t.Fatal(err)
	}
	return p
}

func filter(specs []safetensors.Spec, keep func(string) bool) []safetensors.Spec {
	var out []safetensors.Spec
	for _, s := range specs {
		if keep(s.Name) {
			out = append(out, s)
		}
	}
	return out
}

func rename(specs []safetensors.Spec, from, to string) []safetensors.Spec {
	out := slices.Clone(specs)
	for i := range out {
		out[i].Name = strings.Replace(out[i].Name, from, to, 1)
	}
	return out
}

func TestClassify(t *testing.T) {
	tiny := models.Tiny(1000).Specs(safetensors.F16)
	inpaint := models.Tiny(1000)
	inpaint.InChannels = 9
	sd2 := models.Tiny(1000)
	sd2.ContextDim = 1024
	noVAE := filter(tiny, func(n string) bool { return !strings.HasPrefix(n, "first_stage_model.") })
	vae := rename(filter(tiny, func(n string) bool { return strings.HasPrefix(n, "first_stage_model.") }), "first_stage_model.", "")
	sdxl := append(slices.Clone(tiny),
		safetensors.Spec{Name: "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight", DType: safetensors.F16, Shape: []int{768}},
		safetensors.Spec{Name: "model.diffusion_model.label_emb.0.0.weight", DType: safetensors.F16, Shape: []int{1280, 2816}})
	kohya := []safetensors.Spec{
		{Name: "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", DType: safetensors.F16, Shape: []int{8, 320}},
		{Name: "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", DType: safetensors.F16, Shape: []int{320, 8}},
		{Name: "lora_unet_down_blocks_0_attentions_0_proj_in.alpha", DType: safetensors.F16, Shape: []int{}},
		{Name: "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", DType: safetensors.F16, Shape: []int{8, 768}},
		{Name: "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", DType: safetensors.F16, Shape: []int{768, 8}},
	}
	xlLoRA := []safetensors.Spec{
		{Name: "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", DType: safetensors.F16, Shape: []int{8, 768}},
		{Name: "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", DType: safetensors.F16, Shape: []int{768, 8}},
	}
	tests := []struct {
		name       string
		specs      []safetensors.Spec
		kind, arch string
		components []string
		variant    string
		note       string
	}{
		{"sd15 tiny", tiny, KindCheckpoint, "SD1.5", []string{"text_encoder", "unet", "vae"}, "txt2img", ""},
		{"inpainting", inpaint.Specs(safetensors.F16), KindCheckpoint, "SD1.5", []string{"text_encoder", "unet", "vae"}, "inpainting", ""},
		{"no vae", noVAE, KindCheckpoint, "SD1.5", []string{"text_encoder", "unet"}, "txt2img", "--vae"},
		{"sd2 context", sd2.Specs(safetensors.F16), KindCheckpoint, "SD2.x", nil, "", "not supported"},
		{"sdxl", sdxl, KindCheckpoint, "SDXL", nil, "", "not supported"},
		{"standalone vae", vae, KindVAE, "", nil, "", ""},
		{"kohya lora", kohya, KindLoRA, "SD1.5", []string{"text_encoder", "unet"}, "", ""},
		{"sdxl lora", xlLoRA, KindLoRA, "SDXL", []string{"text_encoder"}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Path(writeZero(t, "m.safetensors", tt.specs))
			if err != nil {
				t.Fatal(err)
			}
			if r.Kind != tt.kind || r.Architecture != tt.arch || r.Variant != tt.variant {
				t.Errorf("kind/arch/variant = %q/%q/%q, want %q/%q/%q", r.Kind, r.Architecture, r.Variant, tt.kind, tt.arch, tt.variant)
			}
			if !slices.Equal(r.Components, tt.components) {
				t.Errorf("components = %v, want %v", r.Components, tt.components)
			}
			if tt.note != "" && !slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, tt.note) }) {
				t.Errorf("notes %q lack %q", r.Notes, tt.note)
			}
		})
	}
}

func TestClassifyUNetConfig(t *testing.T) {
	r, err := Path(writeZero(t, "m.safetensors", models.Tiny(500).Specs(safetensors.F16)))
	if err != nil {
		t.Fatal(err)
	}
	u := r.UNet
	if u.ModelChannels != 32 || !slices.Equal(u.ChannelMult, []int{1, 2, 2, 2}) || u.ContextDim != 128 || u.Heads != 8 {
		t.Errorf("unet = %+v", u)
	}
	if c := r.CLIP; c.Hidden != 128 || c.Layers != 3 || c.Vocab != 500 || c.Heads != 2 {
		t.Errorf("clip = %+v", c)
	}
	if v := r.VAE; v.Ch != 32 || !slices.Equal(v.ChMult, []int{1, 2, 2, 2}) || v.ZChannels != 4 {
		t.Errorf("vae = %+v", v)
	}
}

func TestRejectsGarbage(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.safetensors")
	os.WriteFile(junk, []byte("this is not a model file at all"), 0o644)
	for _, p := range []string{junk, dir, filepath.Join(dir, "missing.safetensors")} {
		if _, err := Path(p); err == nil {
			t.Errorf("Path(%s) accepted garbage", p)
		}
	}
}

// Every golden model file is named with its kind.
func TestGoldenModels(t *testing.T) {
	dir := filepath.Join("..", "..", "shared", "golden", "models")
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("golden models not available: %v", err)
	}
	want := map[string]string{
		"sd15-tiny.safetensors":            KindCheckpoint,
		"controlnet-tiny.safetensors":      KindControlNet,
		"controlnet-tiny-bare.safetensors": KindControlNet,
		"ella-tiny.safetensors":            KindELLA,
		"t5-tiny":                          KindT5,
		"lora-kohya_diffusers.safetensors": KindLoRA,
		"lora-kohya_ldm.safetensors":       KindLoRA,
		"lora-loha.safetensors":            KindLoRA,
		"lora-lokr.safetensors":            KindLoRA,
		"lora-peft.safetensors":            KindLoRA,
	}
	for name, kind := range want {
		r, err := Path(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if r.Kind != kind {
			t.Errorf("%s: kind %q, want %q", name, r.Kind, kind)
		}
		if len(r.Notes) > 0 && kind != KindELLA {
			t.Errorf("%s: unexpected notes %q", name, r.Notes)
		}
	}
}
