// bench_t5.go: the "t5" part of 'sdbridge bench': a FLAN-T5-XL encoder
// (d_model 2048, 24 layers, 32 heads x 64, d_ff 5120; the encoder ELLA uses)
// with random weights, encoding a batch of 2 prompts of 128 tokens (the
// prompt and the negative). T5 runs once per prompt, not per step.
package main

import (
	"time"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/safetensors"
)

// flanT5XL is the released flan-t5-xl encoder configuration.
var flanT5XL = models.T5Config{DModel: 2048, DKV: 64, DFF: 5120, NumHeads: 32, NumLayers: 24, VocabSize: 32128,
	NumBuckets: 32, MaxDistance: 128, FeedForwardProj: "gated-gelu", LayerNormEps: 1e-6, ModelType: "t5"}

func benchT5(repeat int) (benchResult, error) {
	t0 := time.Now()
	src := models.NewRandomSource(models.T5Specs(flanT5XL, safetensors.F16), 5)
	enc, err := models.NewT5Encoder(models.NewWeights(src), flanT5XL, models.T5Options{})
	if err != nil {
		return benchResult{}, err
	}
	load := time.Since(t0).Seconds()
	ids := make([][]int, 2) // [2, 128]
	for b := range ids {
		ids[b] = make([]int, 128)
		for i := range ids[b] {
			ids[b][i] = (i*7919 + b*104729) % flanT5XL.VocabSize
		}
		ids[b][127] = 1 // EOS
	}
	ms, err := timeIt(repeat, func() error { _, err := enc.Encode(ids, nil); return err })
	return benchResult{"t5-xl encode (2 x 128 tokens)", "ids [2,128]", ms, load}, err
}
