// sd15layout.go enumerates every tensor (key and shape) of an SD1.5
// single-file checkpoint for a given configuration, in the original ldm key
// layout. The demo and the benchmarks use it to make SD1.5-structured models
// with random weights (tiny or real size); a test pins it against the golden
// tiny checkpoint. It does not load or run anything.
package models

import (
	"fmt"

	"github.com/sdbridge/sdbridge/safetensors"
)

// Layout is the configuration of an SD1.5-family checkpoint.
type Layout struct {
	// U-Net
	ModelChannels int   // 320
	ChannelMult   []int // [1, 2, 4, 4]
	NumResBlocks  int   // 2
	AttnLevels    []bool
	ContextDim    int // 768
	InChannels    int // 4 (9 for inpainting)
	TransformerFF int // feed-forward multiplier, 4
	// VAE
	VAECh       int   // 128
	VAEChMult   []int // [1, 2, 4, 4]
	VAEResBlock int   // 2
	ZChannels   int   // 4
	// CLIP text encoder
	CLIPHidden int // 768
	CLIPLayers int // 12
	CLIPFF     int // 3072
	CLIPVocab  int // 49408
	CLIPCtx    int // 77
}

// SD15 is the real Stable Diffusion 1.5 layout.
func SD15() Layout {
	return Layout{
		ModelChannels: 320, ChannelMult: []int{1, 2, 4, 4}, NumResBlocks: 2,
		AttnLevels: []bool{true, true, true, false}, ContextDim: 768, InChannels: 4, TransformerFF: 4,
		VAECh: 128, VAEChMult: []int{1, 2, 4, 4}, VAEResBlock: 2, ZChannels: 4,
		CLIPHidden: 768, CLIPLayers: 12, CLIPFF: 3072, CLIPVocab: 49408, CLIPCtx: 77,
	}
}

// Tiny is a small layout with the SD1.5 structure (the golden tiny model's
// shapes, with a vocabulary of the given size).
func Tiny(vocab int) Layout {
	return Layout{
		ModelChannels: 32, ChannelMult: []int{1, 2, 2, 2}, NumResBlocks: 2,
		AttnLevels: []bool{true, true, true, false}, ContextDim: 128, InChannels: 4, TransformerFF: 4,
		VAECh: 32, VAEChMult: []int{1, 2, 2, 2}, VAEResBlock: 2, ZChannels: 4,
		CLIPHidden: 128, CLIPLayers: 3, CLIPFF: 256, CLIPVocab: vocab, CLIPCtx: 77,
	}
}

type specList struct {
	dt    safetensors.DType
	specs []safetensors.Spec
}

func (s *specList) add(name string, shape ...int) {
	s.specs = append(s.specs, safetensors.Spec{Name: name, DType: s.dt, Shape: shape})
}

func (s *specList) linear(key string, in, out int, bias bool) {
	s.add(key+".weight", out, in)
	if bias {
		s.add(key+".bias", out)
	}
}

func (s *specList) conv(key string, in, out, k int) {
	s.add(key+".weight", out, in, k, k)
	s.add(key+".bias", out)
}

func (s *specList) norm(key string, c int) {
	s.add(key+".weight", c)
	s.add(key+".bias", c)
}

// Specs lists every tensor of the checkpoint with dtype dt (alphas_cumprod
// is F32 and position_ids I64, as in released files).
func (l Layout) Specs(dt safetensors.DType) []safetensors.Spec {
	s := &specList{dt: dt}
	l.unetSpecs(s, "model.diffusion_model.")
	l.vaeSpecs(s, "first_stage_model.")
	l.clipSpecs(s, "cond_stage_model.transformer.text_model.")
	s.specs = append(s.specs, safetensors.Spec{Name: "alphas_cumprod", DType: safetensors.F32, Shape: []int{1000}})
	return s.specs
}

func (l Layout) unetSpecs(s *specList, p string) {
	c := l.ModelChannels
	skips := l.unetEncoderSpecs(s, p)
	ch := skips[len(skips)-1]
	block := 0
	for lvl := len(l.ChannelMult) - 1; lvl >= 0; lvl-- {
		m := l.ChannelMult[lvl]
		for r := 0; r <= l.NumResBlocks; r++ {
			key := fmt.Sprintf("%soutput_blocks.%d", p, block)
			skip := skips[len(skips)-1]
			skips = skips[:len(skips)-1]
			l.resSpecs(s, key+".0", ch+skip, m*c)
			ch = m * c
			idx := 1
			if l.AttnLevels[lvl] {
				l.transformerSpecs(s, key+".1", ch)
				idx = 2
			}
			if lvl != 0 && r == l.NumResBlocks {
				s.conv(fmt.Sprintf("%s.%d.conv", key, idx), ch, ch, 3)
			}
			block++
		}
	}
	s.norm(p+"out.0", c)
	s.conv(p+"out.2", c, 4, 3)
}

// unetEncoderSpecs lists time_embed, input_blocks and middle_block (the part
// a ControlNet copies) and returns the channels of every skip connection.
func (l Layout) unetEncoderSpecs(s *specList, p string) []int {
	c := l.ModelChannels
	temb := 4 * c
	s.linear(p+"time_embed.0", c, temb, true)
	s.linear(p+"time_embed.2", temb, temb, true)
	s.conv(p+"input_blocks.0.0", l.InChannels, c, 3)
	ch := c
	skips := []int{c}
	block := 1
	for lvl, m := range l.ChannelMult {
		for r := 0; r < l.NumResBlocks; r++ {
			key := fmt.Sprintf("%sinput_blocks.%d", p, block)
			l.resSpecs(s, key+".0", ch, m*c)
			ch = m * c
			if l.AttnLevels[lvl] {
				l.transformerSpecs(s, key+".1", ch)
			}
			skips = append(skips, ch)
			block++
		}
		if lvl != len(l.ChannelMult)-1 {
			s.conv(fmt.Sprintf("%sinput_blocks.%d.0.op", p, block), ch, ch, 3)
			skips = append(skips, ch)
			block++
		}
	}
	l.resSpecs(s, p+"middle_block.0", ch, ch)
	l.transformerSpecs(s, p+"middle_block.1", ch)
	l.resSpecs(s, p+"middle_block.2", ch, ch)
	return skips
}

func (l Layout) resSpecs(s *specList, key string, in, out int) {
	s.norm(key+".in_layers.0", in)
	s.conv(key+".in_layers.2", in, out, 3)
	s.linear(key+".emb_layers.1", 4*l.ModelChannels, out, true)
	s.norm(key+".out_layers.0", out)
	s.conv(key+".out_layers.3", out, out, 3)
	if in != out {
		s.conv(key+".skip_connection", in, out, 1)
	}
}

func (l Layout) transformerSpecs(s *specList, key string, ch int) {
	s.norm(key+".norm", ch)
	s.conv(key+".proj_in", ch, ch, 1)
	b := key + ".transformer_blocks.0."
	for _, a := range []string{"attn1", "attn2"} {
		kv := ch
		if a == "attn2" {
			kv = l.ContextDim
		}
		s.linear(b+a+".to_q", ch, ch, false)
		s.linear(b+a+".to_k", kv, ch, false)
		s.linear(b+a+".to_v", kv, ch, false)
		s.linear(b+a+".to_out.0", ch, ch, true)
	}
	s.linear(b+"ff.net.0.proj", ch, 2*l.TransformerFF*ch, true)
	s.linear(b+"ff.net.2", l.TransformerFF*ch, ch, true)
	for _, n := range []string{"norm1", "norm2", "norm3"} {
		s.norm(b+n, ch)
	}
	s.conv(key+".proj_out", ch, ch, 1)
}

// ControlNetSpecs lists the tensors of a ControlNet for this U-Net layout in
// the cldm key layout under prefix ("control_model." or ""): a copy of the
// U-Net encoder, the hint encoder (8 convs, 3 -> 16 -> 16 -> 32 -> 32 -> 96
// -> 96 -> 256 -> model_channels), one zero conv per skip and middle_block_out.
func (l Layout) ControlNetSpecs(dt safetensors.DType, prefix string) []safetensors.Spec {
	s := &specList{dt: dt}
	skips := l.unetEncoderSpecs(s, prefix)
	hint := []int{3, 16, 16, 32, 32, 96, 96, 256, l.ModelChannels}
	for i := 0; i+1 < len(hint); i++ {
		s.conv(fmt.Sprintf("%sinput_hint_block.%d", prefix, 2*i), hint[i], hint[i+1], 3)
	}
	for i, ch := range skips {
		s.conv(fmt.Sprintf("%szero_convs.%d.0", prefix, i), ch, ch, 1)
	}
	mid := skips[len(skips)-1]
	s.conv(prefix+"middle_block_out.0", mid, mid, 1)
	return s.specs
}

func (l Layout) vaeSpecs(s *specList, p string) {
	res := func(key string, in, out int) {
		s.norm(key+".norm1", in)
		s.conv(key+".conv1", in, out, 3)
		s.norm(key+".norm2", out)
		s.conv(key+".conv2", out, out, 3)
		if in != out {
			s.conv(key+".nin_shortcut", in, out, 1)
		}
	}
	mid := func(key string, ch int) {
		res(key+".block_1", ch, ch)
		s.norm(key+".attn_1.norm", ch)
		for _, n := range []string{"q", "k", "v", "proj_out"} {
			s.conv(key+".attn_1."+n, ch, ch, 1)
		}
		res(key+".block_2", ch, ch)
	}
	c, z := l.VAECh, l.ZChannels
	s.conv(p+"encoder.conv_in", 3, c, 3)
	ch := c
	for lvl, m := range l.VAEChMult {
		for r := 0; r < l.VAEResBlock; r++ {
			res(fmt.Sprintf("%sencoder.down.%d.block.%d", p, lvl, r), ch, m*c)
			ch = m * c
		}
		if lvl != len(l.VAEChMult)-1 {
			s.conv(fmt.Sprintf("%sencoder.down.%d.downsample.conv", p, lvl), ch, ch, 3)
		}
	}
	mid(p+"encoder.mid", ch)
	s.norm(p+"encoder.norm_out", ch)
	s.conv(p+"encoder.conv_out", ch, 2*z, 3)
	s.conv(p+"quant_conv", 2*z, 2*z, 1)
	s.conv(p+"post_quant_conv", z, z, 1)
	ch = c * l.VAEChMult[len(l.VAEChMult)-1]
	s.conv(p+"decoder.conv_in", z, ch, 3)
	mid(p+"decoder.mid", ch)
	for lvl := len(l.VAEChMult) - 1; lvl >= 0; lvl-- {
		out := c * l.VAEChMult[lvl]
		for r := 0; r <= l.VAEResBlock; r++ {
			res(fmt.Sprintf("%sdecoder.up.%d.block.%d", p, lvl, r), ch, out)
			ch = out
		}
		if lvl != 0 {
			s.conv(fmt.Sprintf("%sdecoder.up.%d.upsample.conv", p, lvl), ch, ch, 3)
		}
	}
	s.norm(p+"decoder.norm_out", ch)
	s.conv(p+"decoder.conv_out", ch, 3, 3)
}

func (l Layout) clipSpecs(s *specList, p string) {
	h := l.CLIPHidden
	s.add(p+"embeddings.token_embedding.weight", l.CLIPVocab, h)
	s.add(p+"embeddings.position_embedding.weight", l.CLIPCtx, h)
	s.specs = append(s.specs, safetensors.Spec{Name: p + "embeddings.position_ids", DType: safetensors.I64, Shape: []int{1, l.CLIPCtx}})
	for i := 0; i < l.CLIPLayers; i++ {
		k := fmt.Sprintf("%sencoder.layers.%d.", p, i)
		s.norm(k+"layer_norm1", h)
		s.norm(k+"layer_norm2", h)
		s.linear(k+"mlp.fc1", h, l.CLIPFF, true)
		s.linear(k+"mlp.fc2", l.CLIPFF, h, true)
		for _, n := range []string{"q_proj", "k_proj", "v_proj", "out_proj"} {
			s.linear(k+"self_attn."+n, h, h, true)
		}
	}
	s.norm(p+"final_layer_norm", h)
}
