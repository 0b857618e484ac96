// bench_controlnet.go: the "controlnet" part of 'sdbridge bench': one
// ControlNet's share of a CFG step (batch 2, hint encoding cached as the
// plugin caches it) with random weights at the layout's shapes, to read next
// to the "unet" part; on a GPU as models.ControlNetCUDA on device tensors.
// It times the network in this process; the plugin boundary adds a round
// trip and the residual hand-off (host BenchmarkControlNetStep measures
// both), not more arithmetic.
package main

import (
	"fmt"
	"time"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/safetensors"
)

// benchControlNet times a ControlNet CFG step for latent h x h.
func benchControlNet(b *bench) (benchResult, error) {
	t0 := time.Now()
	src := models.NewRandomSource(b.layout.ControlNetSpecs(safetensors.F32, ""), 3)
	net, _, err := models.LoadControlNet(src)
	if err != nil {
		return benchResult{}, err
	}
	h := b.h
	x := randomTensor(1, 2, 4, h, h)                   // [2, 4, h, w]: uncond + cond
	ctx := randomTensor(2, 2, 77, b.layout.ContextDim) // [2, 77, D]
	hint := randomTensor(4, 1, 3, 8*h, 8*h)            // [1, 3, 8h, 8w]
	for i := range hint.Data {
		hint.Data[i] = 0.5 + hint.Data[i]/2 // RGB in [0, 1]
	}
	ts := []float32{500, 500} // [2]
	part, shape := "controlnet cfg step (batch 2)", fmt.Sprintf("x [2,4,%d,%d]", h, h)
	if !b.dev.OnGPU() {
		guided, err := net.HintEncode(hint) // [1, mc, h, w], once per image
		if err != nil {
			return benchResult{}, err
		}
		load := time.Since(t0).Seconds()
		ms, timer, err := b.time(func() error { _, err := net.ForwardEncoded(x, guided, ts, ctx); return err })
		return b.result(part, shape, ms, load, timer), err
	}
	g := b.dev.GPU
	gn, err := models.NewControlNetCUDA(g, net)
	if err != nil {
		return benchResult{}, err
	}
	defer gn.Close()
	load := time.Since(t0).Seconds()
	dhint, err := g.Upload(hint) // [1, 3, 8h, 8w]
	if err != nil {
		return benchResult{}, err
	}
	defer dhint.Free()
	guided, err := gn.HintEncodeGPU(dhint) // [1, mc, h, w], once per image
	if err != nil {
		return benchResult{}, err
	}
	defer guided.Free()
	dx, err := g.Upload(x) // [2, 4, h, w]
	if err != nil {
		return benchResult{}, err
	}
	defer dx.Free()
	dctx, err := g.Upload(ctx) // [2, 77, D]
	if err != nil {
		return benchResult{}, err
	}
	defer dctx.Free()
	ms, timer, err := b.time(func() error {
		res, err := gn.ForwardEncodedGPU(dx, guided, ts, dctx, nil)
		for _, r := range res {
			r.Free()
		}
		return err
	})
	return b.result(part, shape, ms, load, timer), err
}
