// bench_test.go measures the CPU merge of a rank-32 LoRA into one 320x320
// and one 1280x1280 attention projection (the smallest and largest SD 1.5
// transformer linears): ΔW = up @ down, W += m·s·ΔW, in float32. Bytes are
// the float32 weights read and written once.
package lora

import (
	"math/rand/v2"
	"testing"
)

func BenchmarkMergeRank32(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	ckpt := newMem()
	lora := newMem()
	type mod struct {
		ldm, kohya string
		c          int
	}
	mods := []mod{
		{"input_blocks.1.1.transformer_blocks.0.attn1.to_q", "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320},
		{"middle_block.1.transformer_blocks.0.attn1.to_q", "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q", 1280},
	}
	orig := map[string][]float32{}
	var bytes int64
	for _, m := range mods {
		key := UNetPrefix + m.ldm + ".weight"
		orig[key] = randn(r, m.c*m.c, 0.02)
		ckpt.put(key, orig[key], m.c, m.c)
		lora.put(m.kohya+".lora_down.weight", randn(r, 32*m.c, 0.1), 32, m.c).
			put(m.kohya+".lora_up.weight", randn(r, m.c*32, 0.1), m.c, 32).
			put(m.kohya+".alpha", []float32{16}, 1)
		bytes += int64(8 * m.c * m.c)
	}
	f, err := Parse("bench.safetensors", lora, nil)
	if err != nil {
		b.Fatal(err)
	}
	p, err := NewPlan(ckpt, []Adapter{{File: f, UNet: 0.8}})
	if err != nil {
		b.Fatal(err)
	}
	dst := map[string][]float32{}
	for k, v := range orig {
		dst[k] = make([]float32, len(v))
	}
	b.SetBytes(bytes)
	b.ReportAllocs()
	for b.Loop() {
		for k, v := range orig {
			if err := p.Apply(k, v, dst[k]); err != nil {
				b.Fatal(err)
			}
		}
	}
}
