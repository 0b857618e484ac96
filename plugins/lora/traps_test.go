// traps_test.go turns the trap checklist of spec §13 into unit tests, one
// subtest per item, on the real-size SD 1.5 key list; and checks the
// validation of spec §10.1-10.2: other architectures refused whole and
// named, unmatched modules listed (first ten and a count), shape mismatches
// naming both keys, nothing planned when anything fails.
package lora

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/safetensors"
)

// loraPair adds a kohya up/down pair with optional alpha (alpha < 0: none).
func loraPair(s *memSource, mod string, out, in, r int, alpha float32) *memSource {
	s.put(mod+".lora_down.weight", nil, r, in).put(mod+".lora_up.weight", nil, out, r)
	if alpha >= 0 {
		s.put(mod+".alpha", []float32{alpha}, 1)
	}
	return s
}

func TestTrapChecklist(t *testing.T) {
	ckpt := sd15Keys()
	ix := NewIndex(ckpt)

	t.Run("up_blocks_0_upsamplers_0_conv is output_blocks.2.1.conv", func(t *testing.T) {
		cm, ok := ix.Resolve("lora_unet_up_blocks_0_upsamplers_0_conv")
		if !ok || cm.Name != UNetPrefix+"output_blocks.2.1.conv" {
			t.Fatalf("resolved to %v, %v", cm, ok)
		}
		if _, ok := ix.Resolve("lora_unet_output_blocks_2_2_conv"); ok {
			t.Error("output_blocks.2.2.conv does not exist in SD 1.5 but resolved")
		}
		src := newMem().put("lora_unet_up_blocks_0_upsamplers_0_conv.lora_down.weight", nil, 4, 1280, 3, 3).
			put("lora_unet_up_blocks_0_upsamplers_0_conv.lora_up.weight", nil, 1280, 4, 1, 1)
		p, err := ix.Plan([]Adapter{{File: parse(t, src, nil), UNet: 1}})
		if err != nil {
			t.Fatal(err)
		}
		if k := p.Keys(); len(k) != 1 || k[0] != UNetPrefix+"output_blocks.2.1.conv.weight" {
			t.Errorf("plan touches %v", k)
		}
	})

	t.Run("lora_te1_ on SD 1.5 is the single text encoder", func(t *testing.T) {
		src := loraPair(newMem(), "lora_te1_text_model_encoder_layers_4_self_attn_v_proj", 768, 768, 4, 4)
		p, err := ix.Plan([]Adapter{{File: parse(t, src, nil), TE: 1}})
		if err != nil {
			t.Fatal(err)
		}
		if k := p.Keys(); len(k) != 1 || k[0] != TEPrefix+"encoder.layers.4.self_attn.v_proj.weight" {
			t.Errorf("plan touches %v", k)
		}
	})

	t.Run("IA3 .weight is not a replacement weight", func(t *testing.T) {
		src := newMem().put("lora_unet_down_blocks_0_attentions_0_proj_in.weight", nil, 320)
		_, err := Parse("ia3.safetensors", src, nil)
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "on_input") {
			t.Errorf("bare .weight: err = %v, want ErrFormat naming on_input", err)
		}
		src.put("lora_unet_down_blocks_0_attentions_0_proj_in.on_input", []float32{0}, 1)
		if f, err := Parse("ia3.safetensors", src, nil); err != nil || f.Modules[0].Algo != AlgoIA3 {
			t.Errorf("with on_input: %v", err)
		}
	})

	t.Run("1x1 conv stored 2-D and linear stored 4-D: numel, not rank", func(t *testing.T) {
		src := newMem()
		loraPair(src, "lora_unet_down_blocks_1_attentions_1_proj_in", 640, 640, 4, 4) // 2-D on [640,640,1,1]
		src.put("lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn1_to_q.lora_down.weight", nil, 4, 640, 1, 1).
			put("lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn1_to_q.lora_up.weight", nil, 640, 4, 1, 1)
		p, err := ix.Plan([]Adapter{{File: parse(t, src, nil), UNet: 1}})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Keys()) != 2 {
			t.Errorf("plan touches %v", p.Keys())
		}
	})

	t.Run("missing alpha is scale 1, PEFT carries none", func(t *testing.T) {
		src := newMem()
		loraPair(src, "lora_unet_mid_block_attentions_0_proj_out", 1280, 1280, 8, -1)
		src.put("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight", nil, 16, 1280).
			put("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight", nil, 1280, 16)
		p, err := ix.Plan([]Adapter{{File: parse(t, src, nil), UNet: 1}})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range p.Keys() {
			tg, _ := p.Target(k)
			if s := tg.Ops[0].Scale; s != 1 {
				t.Errorf("%s: scale %v, want 1", k, s)
			}
		}
	})

	t.Run("fp16 alpha is used as rounded", func(t *testing.T) {
		src := newMem()
		loraPair(src, "lora_unet_mid_block_attentions_0_proj_out", 1280, 1280, 4, -1)
		src.put16("lora_unet_mid_block_attentions_0_proj_out.alpha", []float32{0.3}, 1)
		f := parse(t, src, nil)
		p, err := ix.Plan([]Adapter{{File: f, UNet: 1}})
		if err != nil {
			t.Fatal(err)
		}
		tg, _ := p.Target(UNetPrefix + "middle_block.1.proj_out.weight")
		v := safetensors.F32ToF16(0.3)
		want := float64(halfToFloat(v)) / 4
		if got := tg.Ops[0].Scale; got != want || got == 0.3/4 {
			t.Errorf("scale %v, want the fp16-rounded alpha / 4 = %v", got, want)
		}
	})

	t.Run("ss_network_dim disagreeing with shapes: trust shapes", func(t *testing.T) {
		src := loraPair(newMem(), "lora_unet_mid_block_attentions_0_proj_out", 1280, 1280, 4, 2)
		f := parse(t, src, map[string]string{"ss_network_dim": "128", "ss_network_alpha": "64"})
		p, err := ix.Plan([]Adapter{{File: f, UNet: 1}})
		if err != nil {
			t.Fatal(err)
		}
		tg, _ := p.Target(UNetPrefix + "middle_block.1.proj_out.weight")
		if s := tg.Ops[0].Scale; s != 0.5 {
			t.Errorf("scale %v, want alpha 2 / rank 4 = 0.5", s)
		}
		if in := Describe(f); len(in.Ranks) != 1 || in.Ranks[0] != 4 {
			t.Errorf("Describe ranks %v, want [4]", in.Ranks)
		}
	})

	t.Run("SDXL and SD2 LoRAs are refused whole", func(t *testing.T) {
		// Half of this file would match SD 1.5 by name.
		src := newMem()
		loraPair(src, "lora_unet_output_blocks_4_1_proj_in", 1280, 1280, 4, 4)
		loraPair(src, "lora_unet_output_blocks_4_1_transformer_blocks_1_attn1_to_q", 1280, 1280, 4, 4)
		_, err := ix.Plan([]Adapter{{File: parse(t, src, nil), UNet: 1}})
		if !errors.Is(err, ErrArchitecture) || !strings.Contains(err.Error(), "SDXL") {
			t.Errorf("err = %v, want ErrArchitecture naming SDXL", err)
		}
	})
}

// halfToFloat widens IEEE half bits (test-side, independent of safetensors).
func halfToFloat(h uint16) float32 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	mant := float64(h & 0x3ff)
	if exp == 0 {
		return float32(sign * mant * math.Pow(2, -24))
	}
	return float32(sign * (1 + mant/1024) * math.Pow(2, float64(exp-15)))
}

func TestArchitectureRefused(t *testing.T) {
	ix := NewIndex(sd15Keys())
	tests := []struct {
		name string
		src  *memSource
		meta map[string]string
		want string
	}{
		{"lora_te2_ keys", loraPair(loraPair(newMem(),
			"lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768, 768, 4, 4),
			"lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280, 4, 4), nil, "SDXL"},
		{"transformer_blocks_1", loraPair(newMem(),
			"lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q", 640, 640, 4, 4), nil, "SDXL"},
		{"2048-wide cross-attention on an SD 1.5 name", loraPair(newMem(),
			"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 640, 2048, 4, 4), nil, "SDXL"},
		{"label_emb", loraPair(newMem(), "lora_unet_label_emb_0_0", 1280, 2816, 4, 4), nil, "SDXL"},
		{"1024-wide cross-attention", loraPair(newMem(),
			"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v", 320, 1024, 4, 4), nil, "SD 2.x"},
		{"1024-wide OpenCLIP text encoder", loraPair(newMem(),
			"lora_te_text_model_encoder_layers_0_self_attn_k_proj", 1024, 1024, 4, 4), nil, "SD 2.x"},
		{"OpenCLIP resblocks names", loraPair(newMem(),
			"lora_te_model_transformer_resblocks_0_attn_out_proj", 1024, 1024, 4, 4), nil, "SD 2.x"},
		{"metadata sdxl", loraPair(newMem(), "lora_unet_mid_block_attentions_0_proj_out", 1280, 1280, 4, 4),
			map[string]string{"ss_base_model_version": "sdxl_base_v1-0"}, "SDXL"},
		{"metadata v2", loraPair(newMem(), "lora_unet_mid_block_attentions_0_proj_out", 1280, 1280, 4, 4),
			map[string]string{"ss_v2": "True"}, "SD 2.x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := parse(t, tt.src, tt.meta)
			p, err := ix.Plan([]Adapter{{File: f, UNet: 1, TE: 1}})
			if p != nil || !errors.Is(err, ErrArchitecture) {
				t.Fatalf("plan %v, err %v; want ErrArchitecture", p, err)
			}
			if !strings.Contains(err.Error(), "for "+tt.want) || !strings.Contains(err.Error(), "SD 1.x") {
				t.Errorf("error %q should name %s and the SD 1.x checkpoint", err, tt.want)
			}
		})
	}
}

func TestUnmatchedListed(t *testing.T) {
	ix := NewIndex(sd15Keys())
	src := loraPair(newMem(), "lora_unet_mid_block_attentions_0_proj_out", 1280, 1280, 4, 4)
	for i := 0; i < 15; i++ {
		loraPair(src, fmt.Sprintf("lora_unet_not_a_block_%02d", i), 8, 8, 2, 2)
	}
	_, err := ix.Plan([]Adapter{{File: parse(t, src, nil), UNet: 1}})
	if !errors.Is(err, ErrUnmatched) {
		t.Fatalf("err = %v, want ErrUnmatched", err)
	}
	msg := err.Error()
	for _, want := range []string{"15 of 16 modules", "lora_unet_not_a_block_00", "lora_unet_not_a_block_09", "5 more, 15 in all"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "lora_unet_not_a_block_10") {
		t.Errorf("error lists more than ten names: %q", msg)
	}
}

func TestShapeMismatchNamesBothKeys(t *testing.T) {
	ix := NewIndex(sd15Keys())
	tests := []struct {
		name string
		src  *memSource
		want []string
	}{
		{"LoRA rows", loraPair(newMem(), "lora_unet_mid_block_attentions_0_proj_out", 640, 1280, 4, 4),
			[]string{"lora_unet_mid_block_attentions_0_proj_out.lora_up.weight", "model.diffusion_model.middle_block.1.proj_out.weight"}},
		{"LoRA columns", loraPair(newMem(), "lora_te_text_model_encoder_layers_0_mlp_fc2", 768, 768, 4, 4),
			[]string{"lora_te_text_model_encoder_layers_0_mlp_fc2.lora_down.weight", "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc2.weight"}},
		{"LoHa", newMem().put("lora_unet_mid_block_attentions_0_proj_out.hada_w1_a", nil, 1280, 2).
			put("lora_unet_mid_block_attentions_0_proj_out.hada_w1_b", nil, 2, 640).
			put("lora_unet_mid_block_attentions_0_proj_out.hada_w2_a", nil, 1280, 2).
			put("lora_unet_mid_block_attentions_0_proj_out.hada_w2_b", nil, 2, 640),
			[]string{"hada_w1_a", "middle_block.1.proj_out.weight"}},
		{"LoKr", newMem().put("lora_unet_mid_block_attentions_0_proj_out.lokr_w1", nil, 4, 4).
			put("lora_unet_mid_block_attentions_0_proj_out.lokr_w2", nil, 320, 160),
			[]string{"lokr_w1", "middle_block.1.proj_out.weight"}},
		{"diff", newMem().put("diffusion_model.middle_block.1.proj_out.diff", nil, 1280, 1280, 3, 3),
			[]string{"diffusion_model.middle_block.1.proj_out.diff", "middle_block.1.proj_out.weight"}},
		{"DoRA", loraPair(newMem(), "lora_unet_mid_block_attentions_0_proj_out", 1280, 1280, 4, 4).
			put("lora_unet_mid_block_attentions_0_proj_out.dora_scale", nil, 640),
			[]string{"dora_scale", "middle_block.1.proj_out.weight"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ix.Plan([]Adapter{{File: parse(t, tt.src, nil), UNet: 1, TE: 1}})
			if p != nil || !errors.Is(err, ErrShape) {
				t.Fatalf("plan %v, err %v; want ErrShape", p, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestAtomicAcrossAdapters: a bad second adapter refuses the first too.
func TestAtomicAcrossAdapters(t *testing.T) {
	ix := NewIndex(sd15Keys())
	good := parse(t, loraPair(newMem(), "lora_unet_mid_block_attentions_0_proj_out", 1280, 1280, 4, 4), nil)
	bad := parse(t, loraPair(newMem(), "lora_unet_nowhere", 8, 8, 2, 2), nil)
	if p, err := ix.Plan([]Adapter{{File: good, UNet: 1}, {File: bad, UNet: 1}}); p != nil || !errors.Is(err, ErrUnmatched) {
		t.Errorf("plan %v, err %v; want nothing planned and ErrUnmatched", p, err)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		src  *memSource
		want string
	}{
		{"up without down", newMem().put("lora_unet_x.lora_up.weight", nil, 4, 2), "needs both up"},
		{"unknown suffix", newMem().put("lora_unet_x.mystery", nil, 4), "no known LoRA part suffix"},
		{"alpha alone", newMem().put("lora_unet_x.alpha", []float32{1}, 1), "no weight-carrying part"},
		{"duplicate part", newMem().put("unet.x.lora_A.weight", nil, 2, 4).put("unet.x.lora_A.default.weight", nil, 2, 4).
			put("unet.x.lora_B.weight", nil, 4, 2), "are both the lora_down"},
		{"LoHa incomplete", newMem().put("m.hada_w1_a", nil, 4, 2).put("m.hada_w1_b", nil, 2, 4), "LoHa module needs"},
		{"LoKr w1 missing", newMem().put("m.lokr_w2", nil, 4, 4), "LoKr module needs"},
		{"mixed algorithms", newMem().put("m.lora_up.weight", nil, 4, 2).put("m.lora_down.weight", nil, 2, 4).
			put("m.hada_w1_a", nil, 4, 2), "do not belong"},
		{"non-scalar alpha", newMem().put("m.lora_up.weight", nil, 4, 2).put("m.lora_down.weight", nil, 2, 4).
			put("m.alpha", nil, 2), "want a scalar"},
		{"only embeddings", newMem().put("bundle_emb.foo.string_to_param.*", nil, 1, 768), "no adapter tensors"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("bad.safetensors", tt.src, nil)
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want ErrFormat containing %q", err, tt.want)
			}
		})
	}
}

func TestUnsupportedAlgorithmsRefused(t *testing.T) {
	ix := NewIndex(sd15Keys())
	src := newMem().put("oft_unet_mid_block_attentions_0_proj_out.oft_blocks", nil, 4, 320, 320).
		put("oft_unet_mid_block_attentions_0_proj_out.rescale", nil, 1280, 1, 1, 1)
	_, err := ix.Plan([]Adapter{{File: parse(t, src, nil), UNet: 1}})
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "rescale") {
		t.Errorf("OFT rescale: err = %v, want ErrUnsupported naming rescale", err)
	}
	src = newMem().put("m.lokr_w1_a", nil, 4, 2).put("m.lokr_w1_b", nil, 2, 4).put("m.lokr_t1", nil, 2, 2, 3, 3).
		put("m.lokr_w2", nil, 4, 4)
	if _, err := Parse("t1.safetensors", src, nil); !errors.Is(err, ErrUnsupported) {
		t.Errorf("lokr_t1: err = %v, want ErrUnsupported", err)
	}
}
