// bench_controlnet.go: the "controlnet" part of 'sdbridge bench': one
// ControlNet's share of a CFG step (batch 2, hint encoding cached as the
// plugin caches it) with random weights at the layout's shapes, to read next
// to the "unet" part. It times the network in this process; the plugin
// boundary adds a round trip and the residual hand-off (host
// BenchmarkControlNetStep measures both), not more arithmetic.
package main

import (
	"fmt"
	"time"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/safetensors"
)

// benchControlNet times a ControlNet CFG step for latent h x h.
func benchControlNet(layout models.Layout, h, repeat int) (benchResult, error) {
	t0 := time.Now()
	src := models.NewRandomSource(layout.ControlNetSpecs(safetensors.F32, ""), 3)
	net, _, err := models.LoadControlNet(src)
	if err != nil {
		return benchResult{}, err
	}
	load := time.Since(t0).Seconds()
	x := randomTensor(1, 2, 4, h, h)                 // [2, 4, h, w]: uncond + cond
	ctx := randomTensor(2, 2, 77, layout.ContextDim) // [2, 77, D]
	hint := randomTensor(4, 1, 3, 8*h, 8*h)          // [1, 3, 8h, 8w]
	for i := range hint.Data {
		hint.Data[i] = 0.5 + hint.Data[i]/2 // RGB in [0, 1]
	}
	guided, err := net.HintEncode(hint) // [1, mc, h, w], once per image
	if err != nil {
		return benchResult{}, err
	}
	ts := []float32{500, 500} // [2]
	ms, err := timeIt(repeat, func() error { _, err := net.ForwardEncoded(x, guided, ts, ctx); return err })
	return benchResult{"controlnet cfg step (batch 2)", fmt.Sprintf("x [2,4,%d,%d]", h, h), ms, load}, err
}
