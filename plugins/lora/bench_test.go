// bench_test.go measures the CPU merge of a rank-32 LoRA into one 320x320
// and one 1280x1280 attention projection (the smallest and largest SD 1.5
// transformer linears): ΔW = up @ down, W += m·s·ΔW, in float32. Bytes are
// the float32 weights read and written once.
package lora

import (
	"math/rand/v2"
	"testing"

	"github.com/sdbridge/sdbridge/safetensors"
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

// BenchmarkApplyFromF16 compares widening a 1280x1280 and a 10240x1280
// (ff.net.0-sized) fp16 original and then merging in place (two passes)
// with ApplyFrom (one blocked pass), from a single caller. Bytes: fp16 read
// + float32 written. Here the whole-tensor GEMM of the two-pass merge runs
// on every core while ApplyFrom's widening is serial and its per-block GEMMs
// pay the fork/join each time, so one pass loses; in the plugin, whose
// workers already keep every core busy, it wins (host BenchmarkLoRAPlugin).
func BenchmarkApplyFromF16(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	ckpt, lora := newMem(), newMem()
	mods := []struct {
		ldm, kohya string
		out, in    int
	}{
		{"middle_block.1.transformer_blocks.0.attn1.to_q", "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q", 1280, 1280},
		{"middle_block.1.transformer_blocks.0.ff.net.0.proj", "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj", 10240, 1280},
	}
	orig := map[string][]uint16{}
	var bytes int64
	for _, m := range mods {
		key := UNetPrefix + m.ldm + ".weight"
		w := randn(r, m.out*m.in, 0.02)
		ckpt.put(key, w, m.out, m.in)
		h := make([]uint16, len(w))
		for i, v := range w {
			h[i] = safetensors.F32ToF16(v)
		}
		orig[key] = h
		lora.put(m.kohya+".lora_down.weight", randn(r, 32*m.in, 0.1), 32, m.in).
			put(m.kohya+".lora_up.weight", randn(r, m.out*32, 0.1), m.out, 32).
			put(m.kohya+".alpha", []float32{16}, 1)
		bytes += int64(6 * m.out * m.in)
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
	b.Run("two-pass", func(b *testing.B) {
		b.SetBytes(bytes)
		for b.Loop() {
			for k, h := range orig {
				safetensors.F16ToF32(dst[k], h)
				if err := p.Apply(k, dst[k], dst[k]); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("one-pass", func(b *testing.B) {
		b.SetBytes(bytes)
		for b.Loop() {
			for k, h := range orig {
				w := dst[k]
				if err := p.ApplyFrom(k, w, func(lo, hi int) error { safetensors.F16ToF32(w[lo:hi], h[lo:hi]); return nil }); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
