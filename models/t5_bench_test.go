// t5_bench_test.go measures the T5 encoder at FLAN-T5-XL layer shapes (d_model
// 2048, 32 heads of 64, d_ff 5120, gated gelu_new) on 128 tokens, with 2
// random layers built in memory (24 layers cost ~12x; the released encoder
// needs 4.9 GB of float32 weights). It checks nothing numeric.
package models

import (
	"math/rand/v2"
	"testing"

	"github.com/sdbridge/sdbridge/nn"
)

func benchT5(rng *rand.Rand, layers int) *T5Encoder {
	const d, heads, dkv, ff, vocab = 2048, 32, 64, 5120, 64
	cfg := T5Config{DModel: d, DKV: dkv, DFF: ff, NumHeads: heads, NumLayers: layers, VocabSize: vocab,
		NumBuckets: 32, MaxDistance: 128, FeedForwardProj: "gated-gelu", LayerNormEps: 1e-6, ModelType: "t5"}
	ones := func() *nn.Tensor {
		t := nn.New(d)
		for i := range t.Data {
			t.Data[i] = 1
		}
		return t
	}
	e := &T5Encoder{
		Config:  cfg,
		Embed:   benchTensor(rng, 1, vocab, d),
		RelBias: T5RelativeBias{Table: benchTensor(rng, 1, 32, heads), NumBuckets: 32, MaxDistance: 128},
		Final:   T5RMSNorm{Weight: ones(), Eps: 1e-6},
	}
	for range layers {
		e.Blocks = append(e.Blocks, T5Block{
			AttnNorm: T5RMSNorm{Weight: ones(), Eps: 1e-6},
			Attn: T5Attention{
				Q: benchLinear(rng, d, heads*dkv, false), K: benchLinear(rng, d, heads*dkv, false),
				V: benchLinear(rng, d, heads*dkv, false), O: benchLinear(rng, heads*dkv, d, false), Heads: heads,
			},
			FFNorm: T5RMSNorm{Weight: ones(), Eps: 1e-6},
			FF: T5FeedForward{
				Wi0: benchLinear(rng, d, ff, false), Wi1: benchLinear(rng, d, ff, false),
				Wo: benchLinear(rng, ff, d, false), Act: nn.GELUTanh,
			},
		})
	}
	return e
}

// BenchmarkT5XLTwoLayers encodes one 128-token prompt through 2 XL layers.
func BenchmarkT5XLTwoLayers(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	e := benchT5(rng, 2)
	ids := make([]int, 128)
	for i := range ids {
		ids[i] = rng.IntN(e.VocabSize())
	}
	b.SetBytes(int64(4 * 128 * e.DModel())) // output bytes per encode
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.Encode([][]int{ids}, nil); err != nil {
			b.Fatal(err)
		}
	}
}
