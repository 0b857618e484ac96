// aliases_test.go pins the forward lookup on a real-size SD 1.5 key list:
// the spec §7.3 worked examples in every naming family, every alias of every
// module resolving back to it without collisions, and the kohya module
// counts of spec §7.2.
package lora

import (
	"slices"
	"strings"
	"testing"
)

func TestResolveWorkedExamples(t *testing.T) {
	ix := NewIndex(sd15Keys())
	tests := []struct {
		lora  string
		want  string // checkpoint module
		shape []int
	}{
		{"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q", []int{320, 320}},
		{"lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q", "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q", []int{320, 320}},
		{"lora_unet_down_blocks_1_attentions_1_proj_in", "model.diffusion_model.input_blocks.5.1.proj_in", []int{640, 640, 1, 1}},
		{"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k", "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k", []int{1280, 768}},
		{"lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0", "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.attn1.to_out.0", []int{1280, 1280}},
		{"lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj", "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj", []int{2560, 320}},
		{"lora_unet_down_blocks_1_resnets_0_conv_shortcut", "model.diffusion_model.input_blocks.4.0.skip_connection", []int{640, 320, 1, 1}},
		{"lora_unet_up_blocks_0_resnets_2_time_emb_proj", "model.diffusion_model.output_blocks.2.0.emb_layers.1", []int{1280, 1280}},
		{"lora_unet_up_blocks_0_upsamplers_0_conv", "model.diffusion_model.output_blocks.2.1.conv", []int{1280, 1280, 3, 3}},
		{"lora_unet_up_blocks_1_upsamplers_0_conv", "model.diffusion_model.output_blocks.5.2.conv", []int{1280, 1280, 3, 3}},
		{"lora_unet_down_blocks_2_downsamplers_0_conv", "model.diffusion_model.input_blocks.9.0.op", []int{1280, 1280, 3, 3}},
		{"lora_unet_output_blocks_2_1_conv", "model.diffusion_model.output_blocks.2.1.conv", []int{1280, 1280, 3, 3}},
		{"lora_te_text_model_encoder_layers_3_self_attn_out_proj", "cond_stage_model.transformer.text_model.encoder.layers.3.self_attn.out_proj", []int{768, 768}},
		{"lora_te_text_model_encoder_layers_11_mlp_fc1", "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1", []int{3072, 768}},
		{"lora_te1_text_model_encoder_layers_0_mlp_fc2", "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc2", []int{768, 3072}},
		// PEFT and diffusers
		{"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q", []int{320, 320}},
		{"base_model.model.up_blocks.2.attentions.1.proj_out", "model.diffusion_model.output_blocks.7.1.proj_out", []int{640, 640, 1, 1}},
		{"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q", "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q", []int{320, 320}},
		{"unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out", "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_out.0", []int{1280, 1280}},
		{"text_encoder.text_model.encoder.layers.0.self_attn.q_proj", "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj", []int{768, 768}},
		{"text_encoder.text_model.encoder.layers.2.self_attn.to_out", "cond_stage_model.transformer.text_model.encoder.layers.2.self_attn.out_proj", []int{768, 768}},
		{"base_model.model.text_model.encoder.layers.1.mlp.fc2", "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2", []int{768, 3072}},
		// ComfyUI extractor and LyCORIS via SimpleTuner
		{"diffusion_model.input_blocks.1.1.proj_in", "model.diffusion_model.input_blocks.1.1.proj_in", []int{320, 320, 1, 1}},
		{"diffusion_model.out.2", "model.diffusion_model.out.2", []int{4, 320, 3, 3}},
		{"text_encoders.clip_l.transformer.text_model.encoder.layers.5.mlp.fc1", "cond_stage_model.transformer.text_model.encoder.layers.5.mlp.fc1", []int{3072, 768}},
		{"lycoris_up_blocks_2_attentions_2_transformer_blocks_0_attn2_to_v", "model.diffusion_model.output_blocks.8.1.transformer_blocks.0.attn2.to_v", []int{640, 768}},
	}
	for _, tt := range tests {
		t.Run(tt.lora, func(t *testing.T) {
			cm, ok := ix.Resolve(tt.lora)
			if !ok {
				t.Fatalf("Resolve(%q) found nothing, want %s", tt.lora, tt.want)
			}
			if cm.Name != tt.want || !slices.Equal(cm.Weight, tt.shape) {
				t.Errorf("Resolve(%q) = %s %v, want %s %v", tt.lora, cm.Name, cm.Weight, tt.want, tt.shape)
			}
		})
	}
}

// TestAliasesRoundTrip: every alias of every module resolves to it, and no
// alias is claimed by two modules.
func TestAliasesRoundTrip(t *testing.T) {
	ix := NewIndex(sd15Keys())
	if len(ix.ambiguous) > 0 {
		for a := range ix.ambiguous {
			t.Errorf("alias %q is built for two modules", a)
		}
	}
	n := 0
	for _, cm := range ix.modules {
		for _, a := range Aliases(cm) {
			got, ok := ix.Resolve(a)
			if !ok || got != cm {
				t.Errorf("alias %q of %s resolves to %v, %v", a, cm.Name, got, ok)
			}
			n++
		}
	}
	if n < 3000 {
		t.Errorf("only %d aliases built", n)
	}
}

// TestKohyaModuleCounts checks spec §7.2: 192 transformer modules, +86 for
// LoCon, 72 in the text encoder, all reachable by kohya diffusers names.
func TestKohyaModuleCounts(t *testing.T) {
	ix := NewIndex(sd15Keys())
	var attn, locon, te int
	for _, cm := range ix.modules {
		if cm.Weight == nil || len(cm.Weight) < 2 {
			continue
		}
		if cm.Component == TextEncoder {
			if strings.Contains(cm.Local, "encoder.layers.") {
				te++
			}
			continue
		}
		d, ok := LDMToDiffusers(cm.Local)
		if !ok {
			t.Errorf("%s has no diffusers name", cm.Local)
			continue
		}
		if _, ok := ix.Resolve("lora_unet_" + us(d)); !ok {
			t.Errorf("kohya name of %s does not resolve", cm.Local)
		}
		switch {
		case strings.Contains(d, "attentions") && !strings.HasSuffix(d, ".norm"):
			attn++
		case strings.Contains(d, "resnets") || strings.Contains(d, "samplers"):
			if !strings.HasSuffix(d, "norm1") && !strings.HasSuffix(d, "norm2") {
				locon++
			}
		}
	}
	// Transformer norms (norm1..3) are 1-D and skipped above.
	if attn != 192 || locon != 86 || te != 72 {
		t.Errorf("got %d attention, %d LoCon, %d text-encoder modules; spec §7.2 says 192, 86, 72", attn, locon, te)
	}
}
