// bench_ella.go: the "ella" part of 'sdbridge bench': the ELLA connector
// per sampler step at the release's shapes (W 768, 6 blocks, Din 2048, 64
// latents) with random weights and a 128-token prompt prepared once, for
// both CFG halves (two connector calls: cond and uncond have their own
// lengths and cannot share a batch); on a GPU as models.ELLACUDA on device
// tensors. Compare with "unet cfg step (batch 2)". It does not time T5.
package main

import (
	"fmt"
	"time"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
)

func benchELLA(b *bench) (benchResult, error) {
	t0 := time.Now()
	e, err := models.LoadELLA(models.NewWeights(models.NewRandomSource(b.ella.specs, 1)), b.ella.heads)
	if err != nil {
		return benchResult{}, err
	}
	din := b.ella.din
	x := randomTensor(4, 1, 128, din)         // [1, 128, Din] T5 features
	neg := nn.From(x.Data[:8*din], 1, 8, din) // [1, 8, Din] a short negative
	t := []float32{500.5}
	part, shape := "ella connector cfg step", fmt.Sprintf("text [1,128,%d]+[1,8,%d]", din, din)
	if !b.dev.OnGPU() {
		text, err := e.Prepare(x) // [1, 128, 768], once per prompt
		if err != nil {
			return benchResult{}, err
		}
		uncond, err := e.Prepare(neg) // [1, 8, 768]
		if err != nil {
			return benchResult{}, err
		}
		load := time.Since(t0).Seconds()
		ms, timer, err := b.time(func() error {
			if _, err := e.Conditioning(text, t); err != nil {
				return err
			}
			_, err := e.Conditioning(uncond, t)
			return err
		})
		return b.result(part, shape, ms, load, timer), err
	}
	g, err := models.NewELLACUDA(b.dev.GPU, e)
	if err != nil {
		return benchResult{}, err
	}
	defer g.Close()
	text, err := g.Prepare(x) // [1, 128, 768] on the device
	if err != nil {
		return benchResult{}, err
	}
	defer text.Free()
	uncond, err := g.Prepare(neg) // [1, 8, 768]
	if err != nil {
		return benchResult{}, err
	}
	defer uncond.Free()
	load := time.Since(t0).Seconds()
	ms, timer, err := b.time(func() error {
		if err := freeAfter(g.ConditioningGPU(text, t)); err != nil {
			return err
		}
		return freeAfter(g.ConditioningGPU(uncond, t))
	})
	return b.result(part, shape, ms, load, timer), err
}
