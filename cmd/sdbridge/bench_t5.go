// bench_t5.go: the "t5" part of 'sdbridge bench': a FLAN-T5-XL encoder
// (d_model 2048, 24 layers, 32 heads x 64, d_ff 5120; the encoder ELLA uses)
// with random weights, encoding a batch of 2 prompts of 128 tokens (the
// prompt and the negative); on a GPU as models.T5CUDA. T5 runs once per
// prompt, not per step.
package main

import (
	"time"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/safetensors"
)

// flanT5XL is the released flan-t5-xl encoder configuration.
var flanT5XL = models.T5Config{DModel: 2048, DKV: 64, DFF: 5120, NumHeads: 32, NumLayers: 24, VocabSize: 32128,
	NumBuckets: 32, MaxDistance: 128, FeedForwardProj: "gated-gelu", LayerNormEps: 1e-6, ModelType: "t5"}

func benchT5(b *bench) (benchResult, error) {
	cfg := b.t5
	t0 := time.Now()
	src := models.NewRandomSource(models.T5Specs(cfg, safetensors.F16), 5)
	enc, err := models.NewT5Encoder(models.NewWeights(src), cfg, models.T5Options{})
	if err != nil {
		return benchResult{}, err
	}
	ids := make([][]int, 2) // [2, 128]
	for i := range ids {
		ids[i] = make([]int, 128)
		for j := range ids[i] {
			ids[i][j] = (j*7919 + i*104729) % cfg.VocabSize
		}
		ids[i][127] = 1 // EOS
	}
	encode := func() error { _, err := enc.Encode(ids, nil); return err }
	if b.dev.OnGPU() {
		g, err := models.NewT5CUDA(b.dev.GPU, enc)
		if err != nil {
			return benchResult{}, err
		}
		defer g.Close()
		encode = func() error { return freeAfter(g.EncodeGPU(ids, nil)) }
	}
	load := time.Since(t0).Seconds()
	ms, timer, err := b.time(encode)
	return b.result("t5-xl encode (2 x 128 tokens)", "ids [2,128]", ms, load, timer), err
}
