// peft_test.go pins how PEFT/diffusers files get alpha: the diffusers
// lora_adapter_metadata key (flat or prefixed by component), an
// adapter_config.json beside adapter_model.safetensors, rsLoRA,
// alpha_pattern, LoHa/LoKr configs that spell it "alpha", and scale 1
// without any of them.
package lora

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

func TestPEFTScale(t *testing.T) {
	tests := []struct {
		name   string
		config string
		module string
		rank   int
		want   float64
		ok     bool
	}{
		{"flat", `{"r": 4, "lora_alpha": 8}`, "unet.down_blocks.0.attentions.0.proj_in", 4, 2, true},
		{"prefixed unet", `{"unet.r": 4, "unet.lora_alpha": 2, "text_encoder.lora_alpha": 16}`, "unet.mid_block.attentions.0.proj_in", 4, 0.5, true},
		{"prefixed text encoder", `{"unet.lora_alpha": 2, "text_encoder.lora_alpha": 16}`, "text_encoder.text_model.encoder.layers.0.mlp.fc1", 8, 2, true},
		{"component without alpha", `{"unet.lora_alpha": 2}`, "text_encoder.text_model.encoder.layers.0.mlp.fc1", 8, 0, false},
		{"rank from shapes, not r", `{"r": 64, "lora_alpha": 8}`, "unet.x", 4, 2, true},
		{"rslora", `{"lora_alpha": 8, "use_rslora": true}`, "unet.x", 16, 2, true},
		{"alpha_pattern", `{"lora_alpha": 8, "alpha_pattern": {"attn2.to_k": 2}}`, "unet.a.attn2.to_k", 4, 0.5, true},
		{"LoHa/LoKr alpha", `{"r": 8, "alpha": 4}`, "unet.x", 8, 0.5, true},
		{"LoKr without decomposed side uses r", `{"r": 8, "alpha": 4}`, "unet.x", 0, 0.5, true},
		{"no alpha at all", `{"r": 8}`, "unet.x", 8, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := decodePEFTConfig([]byte(tt.config))
			if err != nil {
				t.Fatal(err)
			}
			got, ok := c.peftScale(tt.module, tt.rank)
			if ok != tt.ok || math.Abs(got-tt.want) > 1e-12 {
				t.Errorf("peftScale = %v, %v; want %v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
	if _, err := decodePEFTConfig([]byte(`{"lora_alpha": "eight"}`)); err == nil {
		t.Error("a string lora_alpha was accepted")
	}
}

func TestLoadSidecarConfig(t *testing.T) {
	dir := t.TempDir()
	src := newMem().
		put("unet.mid_block.attentions.0.proj_in.lora_A.weight", make([]float32, 2*8), 2, 8).
		put("unet.mid_block.attentions.0.proj_in.lora_B.weight", make([]float32, 8*2), 8, 2)
	for _, tt := range []struct {
		file, sidecar string
		want          float64
	}{
		{"adapter_model.safetensors", `{"r": 2, "lora_alpha": 6}`, 3},
		{"adapter_model.safetensors", "", 1},                       // no sidecar: scale 1
		{"other_name.safetensors", `{"r": 2, "lora_alpha": 6}`, 1}, // sidecar only for the PEFT layout
	} {
		t.Run(tt.file+" "+tt.sidecar, func(t *testing.T) {
			sub, err := os.MkdirTemp(dir, "peft")
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(sub, tt.file)
			writeFile(t, path, src, nil)
			if tt.sidecar != "" {
				if err := os.WriteFile(filepath.Join(sub, "adapter_config.json"), []byte(tt.sidecar), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			f, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if got := f.scaleOf(f.Modules[0]); got != tt.want {
				t.Errorf("scale %v, want %v", got, tt.want)
			}
		})
	}
}
