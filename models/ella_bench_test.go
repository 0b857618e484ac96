// ella_bench_test.go measures the ELLA connector per sampler step at the
// released shapes (W 768, 6 blocks, Din 2048, Q 64, E 768, Ct 320, 8 heads)
// on random weights built in memory, with a 128-token prompt prepared once.
// It checks nothing numeric (see ella_test.go and the golden cases).
package models

import (
	"math/rand/v2"
	"testing"

	"github.com/sdbridge/sdbridge/nn"
)

func benchTensor(rng *rand.Rand, scale float32, shape ...int) *nn.Tensor {
	t := nn.New(shape...)
	for i := range t.Data {
		t.Data[i] = float32(rng.NormFloat64()) * scale
	}
	return t
}

func benchLinear(rng *rand.Rand, in, out int, bias bool) *nn.Linear {
	l := &nn.Linear{Weight: benchTensor(rng, 0.02, out, in)}
	if bias {
		l.Bias = benchTensor(rng, 0.02, out)
	}
	return l
}

// benchELLA is a connector with the release's sizes and random weights.
func benchELLA(rng *rand.Rand) *ELLA {
	const w, e, ct, din, q, layers = 768, 768, 320, 2048, 64, 6
	m := &ELLA{
		Time:      ELLATimeEmbedding{Linear1: benchLinear(rng, ct, e, true), Linear2: benchLinear(rng, e, e, true), Channels: ct},
		Latents:   benchTensor(rng, 1, q, w),
		TimeAware: benchLinear(rng, e, w, true),
		ProjIn:    benchLinear(rng, din, w, true),
		Width:     w, InputDim: din, NumLatents: q, TimeChannels: ct, TimeEmbedDim: e, Heads: ELLADefaultHeads,
	}
	for range layers {
		m.Blocks = append(m.Blocks, ELLABlock{
			LN1:  ELLAAdaLayerNorm{Linear: benchLinear(rng, e, 2*w, true)},
			LN2:  ELLAAdaLayerNorm{Linear: benchLinear(rng, e, 2*w, true)},
			LNFF: ELLAAdaLayerNorm{Linear: benchLinear(rng, e, 2*w, true)},
			Attn: ELLAAttention{
				Q: benchLinear(rng, w, w, true), K: benchLinear(rng, w, w, true), V: benchLinear(rng, w, w, true),
				Out: benchLinear(rng, w, w, true), Heads: ELLADefaultHeads,
			},
			MLP: ELLAMLP{FC: benchLinear(rng, w, 4*w, true), Proj: benchLinear(rng, 4*w, w, true)},
		})
	}
	return m
}

// BenchmarkELLAStep is one Conditioning call (one prompt, one timestep) at
// N = 128 tokens; the prompt's projection is prepared outside the loop.
func BenchmarkELLAStep(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	m := benchELLA(rng)
	text, err := m.Prepare(benchTensor(rng, 1, 1, 128, m.InputDim))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(4 * m.NumLatents * m.Width)) // output bytes per step
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Conditioning(text, []float32{500.5}); err != nil {
			b.Fatal(err)
		}
	}
}
