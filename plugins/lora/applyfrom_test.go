// applyfrom_test.go checks Plan.ApplyFrom (the one-pass merge from widened
// originals, block by block) gives bit-identical weights to Apply on a
// float32 copy, for row-local LoRAs over many blocks (with a partial last
// block) and for ops that take the whole-tensor fallback (DoRA), and that
// an error from widen stops it.
package lora

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
)

func TestApplyFromMatchesApply(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	mods := []struct {
		name, ldm, kohya string
		out, in          int
		dora             bool
	}{
		{"ff.net.0 (54 blocks, last partial)", "middle_block.1.transformer_blocks.0.ff.net.0.proj", "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj", 10240, 1280, false},
		{"to_k of the context (768 inputs)", "middle_block.1.transformer_blocks.0.attn2.to_k", "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k", 1280, 768, false},
		{"DoRA to_q (whole-tensor fallback)", "middle_block.1.transformer_blocks.0.attn1.to_q", "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q", 1280, 1280, true},
	}
	ckpt, lora := newMem(), newMem()
	orig := map[string][]float32{}
	for _, m := range mods {
		key := UNetPrefix + m.ldm + ".weight"
		orig[key] = randn(r, m.out*m.in, 0.02)
		ckpt.put(key, orig[key], m.out, m.in)
		lora.put(m.kohya+".lora_down.weight", randn(r, 32*m.in, 0.1), 32, m.in).
			put(m.kohya+".lora_up.weight", randn(r, m.out*32, 0.1), m.out, 32).
			put(m.kohya+".alpha", []float32{16}, 1)
		if m.dora {
			lora.put(m.kohya+".dora_scale", randn(r, m.out, 0.5), m.out, 1)
		}
	}
	f, err := Parse("applyfrom.safetensors", lora, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(ckpt, []Adapter{{File: f, UNet: 0.8}, {File: f, UNet: -0.25}})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		t.Run(m.name, func(t *testing.T) {
			key := UNetPrefix + m.ldm + ".weight"
			want := make([]float32, len(orig[key]))
			if err := p.Apply(key, orig[key], want); err != nil {
				t.Fatal(err)
			}
			got := make([]float32, len(want))
			for i := range got {
				got[i] = float32(math.NaN()) // ApplyFrom must not read dst before widening
			}
			calls := 0
			err := p.ApplyFrom(key, got, func(lo, hi int) error {
				calls++
				copy(got[lo:hi], orig[key][lo:hi])
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("element %d: ApplyFrom %v, Apply %v (%d widen calls)", i, got[i], want[i], calls)
				}
			}
			if m.dora && calls != 1 || !m.dora && m.out*m.in*4 > fusedBlockBytes && calls < 2 {
				t.Fatalf("%d widen calls for %dx%d (dora %v)", calls, m.out, m.in, m.dora)
			}
		})
	}
	t.Run("widen error", func(t *testing.T) {
		key := UNetPrefix + mods[0].ldm + ".weight"
		boom := errors.New("boom")
		err := p.ApplyFrom(key, make([]float32, len(orig[key])), func(lo, hi int) error { return boom })
		if !errors.Is(err, boom) {
			t.Fatalf("err = %v, want boom", err)
		}
	})
}
