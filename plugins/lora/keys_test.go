// keys_test.go pins LoRA key parsing: the longest part suffix wins in every
// naming family, and FuzzParseKey checks on arbitrary names that parsing,
// resolving and loading never panic and keep their invariants (corpus in
// testdata/fuzz/FuzzParseKey).
package lora

import (
	"strings"
	"sync"
	"testing"
)

func TestParseKey(t *testing.T) {
	tests := []struct {
		key, module string
		part        Part
		ok          bool
	}{
		{"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", "lora_unet_down_blocks_0_attentions_0_proj_in", PartUp, true},
		{"lora_unet_input_blocks_1_1_proj_in.lora_down.weight", "lora_unet_input_blocks_1_1_proj_in", PartDown, true},
		{"lora_unet_mid_block_resnets_0_conv1.lora_mid.weight", "lora_unet_mid_block_resnets_0_conv1", PartMid, true},
		{"lora_te_text_model_encoder_layers_0_mlp_fc1.alpha", "lora_te_text_model_encoder_layers_0_mlp_fc1", PartAlpha, true},
		{"unet.a.to_q.lora_A.weight", "unet.a.to_q", PartDown, true},
		{"unet.a.to_q.lora_B.default.weight", "unet.a.to_q", PartUp, true},
		{"unet.a.to_q.lora.up.weight", "unet.a.to_q", PartUp, true},
		{"unet.a.attn1.processor.to_q_lora.down.weight", "unet.a.attn1.processor.to_q", PartDown, true},
		{"unet.a.attn1.processor.to_out_lora.up.weight", "unet.a.attn1.processor.to_out", PartUp, true},
		{"text_encoder.t.q_proj.lora_linear_layer.up.weight", "text_encoder.t.q_proj", PartUp, true},
		{"unet.a.to_q.lora_magnitude_vector", "unet.a.to_q", PartMagnitude, true},
		{"unet.a.to_q.lora_magnitude_vector.weight", "unet.a.to_q", PartMagnitude, true},
		{"m.dora_scale", "m", PartDoRA, true},
		{"m.hada_w1_a", "m", PartHadaW1A, true},
		{"m.hada_t2", "m", PartHadaT2, true},
		{"m.lokr_w1", "m", PartLokrW1, true},
		{"m.lokr_w2_b", "m", PartLokrW2B, true},
		{"m.lokr_t2", "m", PartLokrT2, true},
		{"diffusion_model.out.2.diff", "diffusion_model.out.2", PartDiff, true},
		{"diffusion_model.out.2.diff_b", "diffusion_model.out.2", PartDiffB, true},
		{"m.w_norm", "m", PartWNorm, true},
		{"m.on_input", "m", PartOnInput, true},
		{"lora_unet_x_proj_in.weight", "lora_unet_x_proj_in", PartIA3Weight, true},
		{"m.a1.weight", "m", PartGLoRAA1, true},
		{"m.oft_blocks", "m", PartOFTBlocks, true},
		{"m.scale", "m", PartScale, true},
		{".lora_up.weight", "", "", false}, // nothing left for the module
		{"lora_unet_x", "", "", false},
		{"", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			m, p, ok := ParseKey(tt.key)
			if m != tt.module || p != tt.part || ok != tt.ok {
				t.Errorf("ParseKey(%q) = %q, %q, %v; want %q, %q, %v", tt.key, m, p, ok, tt.module, tt.part, tt.ok)
			}
		})
	}
}

var (
	fuzzIndexOnce sync.Once
	fuzzIndex     *Index
)

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{
		"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
		"unet.mid_block.attentions.0.proj_in.lora_B.default.weight",
		"diffusion_model.output_blocks.2.1.conv.diff",
	} {
		f.Add(s)
	}
	fuzzIndexOnce.Do(func() { fuzzIndex = NewIndex(sd15Keys()) })
	ix := fuzzIndex
	f.Fuzz(func(t *testing.T, key string) {
		mod, part, ok := ParseKey(key)
		if !ok {
			if mod != "" || part != "" {
				t.Fatalf("ParseKey(%q) failed but returned %q, %q", key, mod, part)
			}
			return
		}
		if mod == "" || !strings.HasPrefix(key, mod) || len(mod) >= len(key) {
			t.Fatalf("ParseKey(%q) = module %q", key, mod)
		}
		// Parsing again the module with the same suffix must give the same split.
		if m2, p2, _ := ParseKey(key); m2 != mod || p2 != part {
			t.Fatalf("ParseKey not deterministic on %q", key)
		}
		ix.Resolve(mod)
		LDMToDiffusers(mod)
		transformerBlockIndex(mod)
		// A one-tensor adapter of this name loads or fails cleanly, and so
		// does planning it.
		src := newMem().put(key, []float32{1, 2}, 2)
		if ff, err := Parse("fuzz.safetensors", src, nil); err == nil {
			Describe(ff)
			ix.Plan([]Adapter{{File: ff, UNet: 1, TE: 1}})
		}
	})
}
