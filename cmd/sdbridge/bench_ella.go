// bench_ella.go: the "ella" part of 'sdbridge bench' (to be wired into the
// --parts switch of cmd_bench.go): the ELLA connector per sampler step at
// the release's shapes (W 768, 6 blocks, Din 2048, 64 latents) with random
// weights and a 128-token prompt prepared once, for both CFG halves (two
// connector calls: cond and uncond have their own lengths and cannot share
// a batch). Compare with "unet cfg step (batch 2)". It does not time T5.
package main

import (
	"time"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/ella"
)

func benchELLA(repeat int) (benchResult, error) {
	t0 := time.Now()
	e, err := models.LoadELLA(models.NewWeights(models.NewRandomSource(ella.ReleaseSpecs(), 1)), models.ELLADefaultHeads)
	if err != nil {
		return benchResult{}, err
	}
	load := time.Since(t0).Seconds()
	x := randomTensor(4, 1, 128, ella.ReleaseInputDim) // [1, 128, 2048] T5 features
	text, err := e.Prepare(x)                          // [1, 128, 768], once per prompt
	if err != nil {
		return benchResult{}, err
	}
	uncond, err := e.Prepare(nn.From(x.Data[:8*ella.ReleaseInputDim], 1, 8, ella.ReleaseInputDim)) // [1, 8, 768] a short negative
	if err != nil {
		return benchResult{}, err
	}
	ms, err := timeIt(repeat, func() error {
		if _, err := e.Conditioning(text, []float32{500.5}); err != nil {
			return err
		}
		_, err := e.Conditioning(uncond, []float32{500.5})
		return err
	})
	return benchResult{"ella connector cfg step", "text [1,128,2048]+[1,8,2048]", ms, load}, err
}
