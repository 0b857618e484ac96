// unetmap_test.go pins the ldm -> diffusers U-Net map: against every name
// of the golden unet_ldm_to_diffusers.json (read at test time, never
// copied), and against hand-written rows for the upsampler/downsampler
// traps and names that must be refused.
package lora

import (
	"encoding/json"
	"os"
	"testing"
)

func TestLDMToDiffusersGolden(t *testing.T) {
	path := goldenFile(t, "cases/unet_ldm_to_diffusers.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]string
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(want) < 600 {
		t.Fatalf("%s holds %d names, expected the whole U-Net", path, len(want))
	}
	bad := 0
	for ldm, d := range want {
		got, ok := LDMToDiffusers(ldm)
		if !ok || got != d {
			bad++
			if bad <= 10 {
				t.Errorf("LDMToDiffusers(%q) = %q, %v; want %q", ldm, got, ok, d)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d names mapped wrongly", bad, len(want))
	}
}

func TestLDMToDiffusersTable(t *testing.T) {
	tests := []struct {
		ldm, want string
	}{
		{"input_blocks.0.0.weight", "conv_in.weight"},
		{"input_blocks.1.1.transformer_blocks.0.attn1.to_q", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"},
		{"input_blocks.5.1.proj_in", "down_blocks.1.attentions.1.proj_in"},
		{"input_blocks.4.0.skip_connection", "down_blocks.1.resnets.0.conv_shortcut"},
		{"input_blocks.9.0.op", "down_blocks.2.downsamplers.0.conv"},
		{"input_blocks.3.0.op.bias", "down_blocks.0.downsamplers.0.conv.bias"},
		{"input_blocks.11.0.out_layers.3", "down_blocks.3.resnets.1.conv2"},
		{"middle_block.1.transformer_blocks.0.attn2.to_k", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"},
		{"middle_block.2.emb_layers.1", "mid_block.resnets.1.time_emb_proj"},
		{"output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv"}, // index 1: up_blocks.0 has no attention
		{"output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv"},
		{"output_blocks.8.2.conv.weight", "up_blocks.2.upsamplers.0.conv.weight"},
		{"output_blocks.2.0.emb_layers.1", "up_blocks.0.resnets.2.time_emb_proj"},
		{"output_blocks.3.1.transformer_blocks.0.attn1.to_out.0", "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0"},
		{"output_blocks.11.1.transformer_blocks.0.ff.net.0.proj", "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj"},
		{"output_blocks.5.0.skip_connection", "up_blocks.1.resnets.2.conv_shortcut"},
		{"time_embed.2", "time_embedding.linear_2"},
		{"out.0.weight", "conv_norm_out.weight"},
		{"out.2", "conv_out"},
	}
	for _, tt := range tests {
		t.Run(tt.ldm, func(t *testing.T) {
			got, ok := LDMToDiffusers(tt.ldm)
			if !ok || got != tt.want {
				t.Errorf("LDMToDiffusers(%q) = %q, %v; want %q", tt.ldm, got, ok, tt.want)
			}
		})
	}
}

func TestLDMToDiffusersRefuses(t *testing.T) {
	for _, name := range []string{
		"", "input_blocks", "input_blocks.x.0", "input_blocks.01.0.in_layers.0", "input_blocks.12.0.in_layers.0",
		"input_blocks.10.1.proj_in", // down_blocks.3 has no attention
		"input_blocks.1.0.op",       // not a downsampler slot
		"output_blocks.0.1.proj_in", // up_blocks.0 has no attention
		"output_blocks.11.2.conv",   // up_blocks.3 has no upsampler
		"output_blocks.12.0.in_layers.0", "middle_block.3.proj_in", "input_blocks.1.0.in_layers.1",
		"time_embed.1", "label_emb.0.0", "out.1",
	} {
		t.Run(name, func(t *testing.T) {
			if got, ok := LDMToDiffusers(name); ok {
				t.Errorf("LDMToDiffusers(%q) = %q, want refusal", name, got)
			}
		})
	}
}
