// sd15_test.go generates the key list of a real-size SD 1.5 checkpoint
// (U-Net and CLIP text encoder, real shapes, no data) from the v1-inference
// config, so name-map, trap and architecture tests see real widths (768
// context, 1280 channels) without a 4 GB file. It checks its own count
// against the spec's 686 U-Net / 196 text-encoder tensors.
package lora

import (
	"fmt"
	"strings"
	"testing"
)

// sd15Keys returns shape-only checkpoint keys of SD 1.5.
func sd15Keys() *memSource {
	s := newMem()
	u := func(name string, shape ...int) { s.put(UNetPrefix+name, nil, shape...) }
	lin := func(name string, out, in int, bias bool) {
		u(name+".weight", out, in)
		if bias {
			u(name+".bias", out)
		}
	}
	conv := func(name string, out, in, k int) {
		u(name+".weight", out, in, k, k)
		u(name+".bias", out)
	}
	norm := func(name string, c int) {
		u(name+".weight", c)
		u(name+".bias", c)
	}
	res := func(p string, cin, c int) {
		norm(p+".in_layers.0", cin)
		conv(p+".in_layers.2", c, cin, 3)
		lin(p+".emb_layers.1", c, 1280, true)
		norm(p+".out_layers.0", c)
		conv(p+".out_layers.3", c, c, 3)
		if cin != c {
			conv(p+".skip_connection", c, cin, 1)
		}
	}
	attn := func(p string, c int) {
		norm(p+".norm", c)
		conv(p+".proj_in", c, c, 1)
		tb := p + ".transformer_blocks.0"
		for _, a := range []string{"attn1", "attn2"} {
			ctx := c
			if a == "attn2" {
				ctx = 768
			}
			lin(tb+"."+a+".to_q", c, c, false)
			lin(tb+"."+a+".to_k", c, ctx, false)
			lin(tb+"."+a+".to_v", c, ctx, false)
			lin(tb+"."+a+".to_out.0", c, c, true)
		}
		lin(tb+".ff.net.0.proj", 8*c, c, true)
		lin(tb+".ff.net.2", c, 4*c, true)
		for _, n := range []string{"norm1", "norm2", "norm3"} {
			norm(tb+"."+n, c)
		}
		conv(p+".proj_out", c, c, 1)
	}
	mult := []int{1, 2, 4, 4}
	conv("input_blocks.0.0", 320, 4, 3)
	skips := []int{320}
	ch := 320
	for i, m := range mult {
		c := 320 * m
		for j := 0; j < 2; j++ {
			n := 3*i + j + 1
			res(fmt.Sprintf("input_blocks.%d.0", n), ch, c)
			ch = c
			if i < 3 {
				attn(fmt.Sprintf("input_blocks.%d.1", n), c)
			}
			skips = append(skips, c)
		}
		if i < 3 {
			conv(fmt.Sprintf("input_blocks.%d.0.op", 3*i+3), c, c, 3)
			skips = append(skips, c)
		}
	}
	res("middle_block.0", 1280, 1280)
	attn("middle_block.1", 1280)
	res("middle_block.2", 1280, 1280)
	for i := 0; i < 4; i++ {
		c := 320 * mult[3-i]
		for j := 0; j < 3; j++ {
			n := 3*i + j
			skip := skips[len(skips)-1]
			skips = skips[:len(skips)-1]
			res(fmt.Sprintf("output_blocks.%d.0", n), ch+skip, c)
			ch = c
			sub := 1
			if i > 0 {
				attn(fmt.Sprintf("output_blocks.%d.1", n), c)
				sub = 2
			}
			if j == 2 && i < 3 {
				conv(fmt.Sprintf("output_blocks.%d.%d.conv", n, sub), c, c, 3)
			}
		}
	}
	lin("time_embed.0", 1280, 320, true)
	lin("time_embed.2", 1280, 1280, true)
	norm("out.0", 320)
	conv("out.2", 4, 320, 3)

	te := func(name string, shape ...int) { s.put(TEPrefix+name, nil, shape...) }
	te("embeddings.token_embedding.weight", 49408, 768)
	te("embeddings.position_embedding.weight", 77, 768)
	for l := 0; l < 12; l++ {
		p := fmt.Sprintf("encoder.layers.%d.", l)
		for _, q := range []string{"q_proj", "k_proj", "v_proj", "out_proj"} {
			te(p+"self_attn."+q+".weight", 768, 768)
			te(p+"self_attn."+q+".bias", 768)
		}
		te(p+"mlp.fc1.weight", 3072, 768)
		te(p+"mlp.fc1.bias", 3072)
		te(p+"mlp.fc2.weight", 768, 3072)
		te(p+"mlp.fc2.bias", 768)
		for _, n := range []string{"layer_norm1", "layer_norm2"} {
			te(p+n+".weight", 768)
			te(p+n+".bias", 768)
		}
	}
	te("final_layer_norm.weight", 768)
	te("final_layer_norm.bias", 768)
	return s
}

func TestSD15KeysGenerator(t *testing.T) {
	s := sd15Keys()
	var unet, te int
	for _, n := range s.Names() {
		switch {
		case strings.HasPrefix(n, UNetPrefix):
			unet++
		case strings.HasPrefix(n, TEPrefix):
			te++
		}
	}
	if unet != 686 || te != 196 {
		t.Errorf("generated %d U-Net and %d text-encoder tensors, SD 1.5 has 686 and 196", unet, te)
	}
	for key, want := range map[string][]int{
		"input_blocks.4.0.skip_connection.weight":   {640, 320, 1, 1},
		"output_blocks.0.0.in_layers.2.weight":      {1280, 2560, 3, 3},
		"output_blocks.5.0.skip_connection.weight":  {1280, 1920, 1, 1},
		"output_blocks.8.0.skip_connection.weight":  {640, 960, 1, 1},
		"output_blocks.11.0.skip_connection.weight": {320, 640, 1, 1},
		"output_blocks.2.1.conv.weight":             {1280, 1280, 3, 3},
		"output_blocks.8.2.conv.weight":             {640, 640, 3, 3},
	} {
		info, ok := s.Lookup(UNetPrefix + key)
		if !ok || fmt.Sprint(info.Shape) != fmt.Sprint(want) {
			t.Errorf("%s: generated %v, spec §5 says %v", key, info, want)
		}
	}
}
