// images.go: the image models on the GPU (models.UNetCUDA, ControlNetCUDA,
// VAEDecoderCUDA, VAEEncoderCUDA) with the real SD1.5 layout and random
// weights (models.NewRandomSource, as `sdbridge bench` binds them): each is
// checked against its CPU model at a small latent, then timed at the 512px
// latent [2, 4, 64, 64] (one CFG step's batch; the VAE at batch 1). The GPU
// forwards are the models package's own; this file only drives them. It
// does not time the text encoders or plugins.
package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// sd15Seed seeds the random SD1.5 weights (any value; fixed for repeatable
// logs).
const sd15Seed = 1

// modelTol is the rel L2 bound of a whole model against the CPU one.
const modelTol = 1e-4

// compareT compares a GPU result with the CPU one, shapes first.
func compareT(name string, got, want *nn.Tensor) {
	if !slices.Equal(got.Shape, want.Shape) {
		fail(name, fmt.Errorf("shape %v, want %v", got.Shape, want.Shape))
		return
	}
	compare(name, got.Data, want.Data, modelTol)
}

// checkAndTimeUNet binds the SD1.5 U-Net, compares GPU with CPU at a
// side x side latent (batch 2, with ControlNet-style residuals), and times
// a CFG step at timeSide (0 skips the timing).
func checkAndTimeUNet(g *nn.GPU, side, timeSide int) {
	guard("sd15 unet", func() error {
		g.Poison = true // unwritten elements read NaN in the check
		defer func() { g.Poison = false }()
		t0 := time.Now()
		src := models.NewRandomSource(models.SD15().Specs(safetensors.F16), sd15Seed)
		u, err := models.LoadUNet(models.NewWeights(src).Sub("model.diffusion_model."))
		if err != nil {
			return err
		}
		t1 := time.Now()
		c, err := models.NewUNetCUDA(g, u)
		if err != nil {
			return err
		}
		defer c.Close()
		logf("sd15 unet: random weights bound in %.1f s, uploaded in %.1f s", t1.Sub(t0).Seconds(), time.Since(t1).Seconds())
		ts := []float32{500, 500}
		ctx := randT(1, 2, 77, 768) // [2, 77, 768]
		x := randT(1, 2, 4, side, side)
		res := models.Residuals{}
		for name, s := range models.ResidualShapes(u.Config, 2, side, side) {
			res[name] = randT(0.5, s...)
		}
		t2 := time.Now()
		want, err := u.Forward(x, ts, ctx, res)
		if err != nil {
			return err
		}
		cpu := time.Since(t2)
		t3 := time.Now()
		got, err := c.Forward(x, ts, ctx, res)
		if err != nil {
			return err
		}
		logf("sd15 unet at %dx%d: CPU %.2f s, GPU first call %.2f s", side, side, cpu.Seconds(), time.Since(t3).Seconds())
		compareT(fmt.Sprintf("sd15 unet x [2,4,%d,%d] t=500 ctx [2,77,768] + 13 residuals", side, side), got, want)
		if timeSide <= 0 {
			return nil
		}
		dx, dctx := up(g, randT(1, 2, 4, timeSide, timeSide)), up(g, ctx)
		defer dx.Free()
		defer dctx.Free()
		g.Poison = false
		bench(g, fmt.Sprintf("sd15 unet CFG step [2,4,%d,%d] (models.UNetCUDA.ForwardGPU)", timeSide, timeSide), 1.606e12*float64(timeSide*timeSide)/4096, 0, func() error {
			y, err := c.ForwardGPU(dx, ts, dctx, nil)
			if err != nil {
				return err
			}
			return y.Free()
		})
		return nil
	})
}

// checkAndTimeControlNet binds an SD1.5 ControlNet, compares its residuals
// with the CPU ones at side x side (batch 2, one hint broadcast), and times
// one CFG step's residuals at timeSide, written into preallocated buffers.
func checkAndTimeControlNet(g *nn.GPU, side, timeSide int) {
	guard("sd15 controlnet", func() error {
		g.Poison = true // unwritten elements read NaN in the check
		defer func() { g.Poison = false }()
		src := models.NewRandomSource(models.SD15().ControlNetSpecs(safetensors.F16, ""), sd15Seed)
		cn, _, err := models.LoadControlNet(src)
		if err != nil {
			return err
		}
		c, err := models.NewControlNetCUDA(g, cn)
		if err != nil {
			return err
		}
		defer c.Close()
		ts := []float32{500, 500}
		ctx := randT(1, 2, 77, 768)              // [2, 77, 768]
		x := randT(1, 2, 4, side, side)          // [2, 4, side, side]
		hint := randT(0.5, 1, 3, 8*side, 8*side) // [1, 3, 8side, 8side]
		want, err := cn.Forward(x, hint, ts, ctx)
		if err != nil {
			return err
		}
		got, err := c.Forward(x, hint, ts, ctx)
		if err != nil {
			return err
		}
		for _, name := range models.ResidualNames(cn.Config) {
			compareT(fmt.Sprintf("sd15 controlnet x [2,4,%d,%d] residual %s", side, side, name), got[name], want[name])
		}
		if timeSide <= 0 {
			return nil
		}
		dx, dctx := up(g, randT(1, 2, 4, timeSide, timeSide)), up(g, ctx)
		defer dx.Free()
		defer dctx.Free()
		dhint := up(g, randT(0.5, 1, 3, 8*timeSide, 8*timeSide))
		defer dhint.Free()
		guided, err := c.HintEncodeGPU(dhint)
		if err != nil {
			return err
		}
		defer guided.Free()
		dst := models.GPUResiduals{}
		for name, s := range models.ResidualShapes(cn.Config, 2, timeSide, timeSide) {
			d, err := g.Empty(s...)
			if err != nil {
				return err
			}
			defer d.Free()
			dst[name] = d
		}
		g.Poison = false
		bench(g, fmt.Sprintf("sd15 controlnet CFG step [2,4,%d,%d] (ForwardEncodedGPU into device buffers)", timeSide, timeSide), 0, 0, func() error {
			_, err := c.ForwardEncodedGPU(dx, guided, ts, dctx, dst)
			return err
		})
		return nil
	})
}

// checkAndTimeVAE binds the SD1.5 VAE, compares decode and encode with the
// CPU at a side x side latent (batch 1), and times a decode at timeSide.
func checkAndTimeVAE(g *nn.GPU, side, timeSide int) {
	guard("sd15 vae", func() error {
		g.Poison = true // unwritten elements read NaN in the check
		defer func() { g.Poison = false }()
		src := models.NewRandomSource(models.SD15().Specs(safetensors.F16), sd15Seed)
		v, err := models.LoadVAE(models.NewWeights(src), 0)
		if err != nil {
			return err
		}
		dec, err := models.NewVAEDecoderCUDA(g, v)
		if err != nil {
			return err
		}
		defer dec.Close()
		enc, err := models.NewVAEEncoderCUDA(g, v)
		if err != nil {
			return err
		}
		defer enc.Close()
		lat := randT(1, 1, 4, side, side) // [1, 4, side, side]
		want, err := v.Decode(lat)
		if err != nil {
			return err
		}
		got, err := dec.Decode(lat)
		if err != nil {
			return err
		}
		compareT(fmt.Sprintf("sd15 vae decode [1,4,%d,%d]", side, side), got, want)
		img := randT(0.9, 1, 3, 8*side, 8*side) // [1, 3, 8side, 8side]
		wantLat, err := v.Encode(img)
		if err != nil {
			return err
		}
		gotLat, err := enc.Encode(img)
		if err != nil {
			return err
		}
		compareT(fmt.Sprintf("sd15 vae encode [1,3,%d,%d]", 8*side, 8*side), gotLat, wantLat)
		if timeSide <= 0 {
			return nil
		}
		big := randT(1, 1, 4, timeSide, timeSide)
		g.Poison = false
		bench(g, fmt.Sprintf("sd15 vae decode [1,4,%d,%d] -> [1,3,%d,%d] (CPU tensors at the edges)", timeSide, timeSide, 8*timeSide, 8*timeSide), 0, 0, func() error {
			_, err := dec.Decode(big)
			return err
		})
		return nil
	})
}
