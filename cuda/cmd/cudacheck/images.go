// images.go: the image models on the GPU (models.UNetCUDA, ControlNetCUDA,
// VAEDecoderCUDA, VAEEncoderCUDA) with the real SD1.5 layout and random
// weights (models.NewRandomSource, as `sdbridge bench` binds them): each is
// checked against its CPU model at a small latent in every activation
// dtype asked for (fp32: rel L2 <= 1e-4; fp16 storage with fp32
// arithmetic: <= 1e-2), then timed at the 512px latent [2, 4, 64, 64] (one
// CFG step's batch; the VAE at batch 1). The CPU reference is computed once
// per model. The GPU forwards are the models package's own; this file only
// drives them. It does not time the text encoders or plugins.
package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// sd15Seed seeds the random SD1.5 weights (any value; fixed for repeatable
// logs).
const sd15Seed = 1

// modelTol is the rel L2 bound of a whole model against the CPU one.
func modelTol(d nn.GPUDType) float64 {
	if d == nn.GPUF16 {
		return 1e-2
	}
	return 1e-4
}

// compareT compares a GPU result with the CPU one, shapes first.
func compareT(name string, got, want *nn.Tensor, tol float64) {
	if !slices.Equal(got.Shape, want.Shape) {
		fail(name, fmt.Errorf("shape %v, want %v", got.Shape, want.Shape))
		return
	}
	compare(name, got.Data, want.Data, tol)
}

// eachDType runs fn with g's activation dtype set to each of dts in turn
// (poisoned outputs during the checks), restoring g afterwards.
func eachDType(g *nn.GPU, dts []nn.GPUDType, fn func(d nn.GPUDType)) {
	d0, p0 := g.DType, g.Poison
	defer func() { g.DType, g.Poison = d0, p0 }()
	for _, d := range dts {
		g.DType, g.Poison = d, true
		fn(d)
	}
}

// checkAndTimeUNet binds the SD1.5 U-Net, compares GPU with CPU at a
// side x side latent (batch 2, with ControlNet-style residuals), and times
// a CFG step at timeSide (0 skips the timing). With graphs it also checks
// UNetCUDA.Graphs (build, a replay with other inputs, a replay with the
// first inputs again against the CPU) and times the replayed step.
func checkAndTimeUNet(g *nn.GPU, dts []nn.GPUDType, side, timeSide int, graphs bool) {
	t0 := time.Now()
	src := models.NewRandomSource(models.SD15().Specs(safetensors.F16), sd15Seed)
	u, err := models.LoadUNet(models.NewWeights(src).Sub("model.diffusion_model."))
	if err != nil {
		fail("sd15 unet", err)
		return
	}
	logf("sd15 unet: random weights bound in %.1f s", time.Since(t0).Seconds())
	ts := []float32{500, 500}
	ctx := randT(1, 2, 77, 768) // [2, 77, 768]
	x := randT(1, 2, 4, side, side)
	res := models.Residuals{}
	for name, s := range models.ResidualShapes(u.Config, 2, side, side) {
		res[name] = randT(0.5, s...)
	}
	t1 := time.Now()
	want, err := u.Forward(x, ts, ctx, res)
	if err != nil {
		fail("sd15 unet", err)
		return
	}
	logf("sd15 unet at %dx%d: CPU %.2f s", side, side, time.Since(t1).Seconds())
	eachDType(g, dts, func(d nn.GPUDType) {
		guard("sd15 unet "+d.String(), func() error {
			t2 := time.Now()
			c, err := models.NewUNetCUDA(g, u)
			if err != nil {
				return err
			}
			defer c.Close()
			t3 := time.Now()
			got, err := c.Forward(x, ts, ctx, res)
			if err != nil {
				return err
			}
			logf("sd15 unet %s: weights uploaded in %.2f s, first call %.2f s", d, t3.Sub(t2).Seconds(), time.Since(t3).Seconds())
			compareT(fmt.Sprintf("sd15 unet %s x [2,4,%d,%d] t=500 ctx [2,77,768] + 13 residuals", d, side, side), got, want, modelTol(d))
			if graphs {
				checkUNetGraph(g, c, d, x, ts, ctx, res, want)
			}
			if timeSide <= 0 {
				return nil
			}
			g.Poison = false
			dx, dctx := up(g, randT(1, 2, 4, timeSide, timeSide)), up(g, ctx)
			defer dx.Free()
			defer dctx.Free()
			flops := 1.606e12 * float64(timeSide*timeSide) / 4096
			bench(g, fmt.Sprintf("sd15 unet %s CFG step [2,4,%d,%d] (models.UNetCUDA.ForwardGPU)", d, timeSide, timeSide), flops, 0, func() error {
				y, err := c.ForwardGPU(dx, ts, dctx, nil)
				if err != nil {
					return err
				}
				return y.Free()
			})
			if graphs {
				c.Graphs = true
				bench(g, fmt.Sprintf("sd15 unet %s CFG step [2,4,%d,%d] (CUDA graph replay)", d, timeSide, timeSide), flops, 0, func() error {
					y, err := c.ForwardGPU(dx, ts, dctx, nil)
					if err != nil {
						return err
					}
					return y.Free()
				})
				c.Graphs = false
			}
			return nil
		})
	})
}

// checkUNetGraph runs c with Graphs on: a build with the inputs of want, a
// replay with other inputs and timesteps (its result must differ, and
// match the eager forward of those inputs: the same kernels and GEMMs, so
// within 1e-6, bit for bit on the stand-ins), a replay with the first
// inputs again (compared with the CPU's want).
func checkUNetGraph(g *nn.GPU, c *models.UNetCUDA, d nn.GPUDType, x *nn.Tensor, ts []float32, ctx *nn.Tensor, res models.Residuals, want *nn.Tensor) {
	name := fmt.Sprintf("sd15 unet %s CUDA graph: build, replay other inputs, replay the first again", d)
	guard(name, func() error {
		c.Graphs = true
		defer func() { c.Graphs = false }()
		g.Poison = false
		first, err := c.Forward(x, ts, ctx, res)
		if err != nil {
			return err
		}
		compareT(name+" (build)", first, want, modelTol(d))
		ox, ots := randT(1, x.Shape...), []float32{900, 100}
		other, err := c.Forward(ox, ots, ctx, res) // same shapes: the same graph
		if err != nil {
			return err
		}
		if slices.Equal(other.Data, first.Data) {
			return fmt.Errorf("a replay with other inputs returned the first result")
		}
		c.Graphs = false
		eager, err := c.Forward(ox, ots, ctx, res)
		c.Graphs = true
		if err != nil {
			return err
		}
		compareT(name+" (replay vs eager forward of the other inputs)", other, eager, 1e-6)
		again, err := c.Forward(x, ts, ctx, res)
		if err != nil {
			return err
		}
		compareT(name, again, want, modelTol(d))
		return nil
	})
}

// checkAndTimeControlNet binds an SD1.5 ControlNet, compares its residuals
// with the CPU ones at side x side (batch 2, one hint broadcast), and times
// one CFG step's residuals at timeSide, written into preallocated buffers.
func checkAndTimeControlNet(g *nn.GPU, dts []nn.GPUDType, side, timeSide int) {
	src := models.NewRandomSource(models.SD15().ControlNetSpecs(safetensors.F16, ""), sd15Seed)
	cn, _, err := models.LoadControlNet(src)
	if err != nil {
		fail("sd15 controlnet", err)
		return
	}
	ts := []float32{500, 500}
	ctx := randT(1, 2, 77, 768)              // [2, 77, 768]
	x := randT(1, 2, 4, side, side)          // [2, 4, side, side]
	hint := randT(0.5, 1, 3, 8*side, 8*side) // [1, 3, 8side, 8side]
	want, err := cn.Forward(x, hint, ts, ctx)
	if err != nil {
		fail("sd15 controlnet", err)
		return
	}
	eachDType(g, dts, func(d nn.GPUDType) {
		guard("sd15 controlnet "+d.String(), func() error {
			c, err := models.NewControlNetCUDA(g, cn)
			if err != nil {
				return err
			}
			defer c.Close()
			got, err := c.Forward(x, hint, ts, ctx)
			if err != nil {
				return err
			}
			for _, name := range models.ResidualNames(cn.Config) {
				compareT(fmt.Sprintf("sd15 controlnet %s x [2,4,%d,%d] residual %s", d, side, side, name), got[name], want[name], modelTol(d))
			}
			if timeSide <= 0 {
				return nil
			}
			g.Poison = false
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
				b, err := g.Empty(s...)
				if err != nil {
					return err
				}
				defer b.Free()
				dst[name] = b
			}
			bench(g, fmt.Sprintf("sd15 controlnet %s CFG step [2,4,%d,%d] (ForwardEncodedGPU into device buffers)", d, timeSide, timeSide), 0, 0, func() error {
				_, err := c.ForwardEncodedGPU(dx, guided, ts, dctx, dst)
				return err
			})
			return nil
		})
	})
}

// checkAndTimeVAE binds the SD1.5 VAE, compares decode and encode with the
// CPU at a side x side latent (batch 1), and times a decode at timeSide.
func checkAndTimeVAE(g *nn.GPU, dts []nn.GPUDType, side, timeSide int) {
	src := models.NewRandomSource(models.SD15().Specs(safetensors.F16), sd15Seed)
	v, err := models.LoadVAE(models.NewWeights(src), 0)
	if err != nil {
		fail("sd15 vae", err)
		return
	}
	lat := randT(1, 1, 4, side, side)       // [1, 4, side, side]
	img := randT(0.9, 1, 3, 8*side, 8*side) // [1, 3, 8side, 8side]
	want, err := v.Decode(lat)
	if err != nil {
		fail("sd15 vae", err)
		return
	}
	wantLat, err := v.Encode(img)
	if err != nil {
		fail("sd15 vae", err)
		return
	}
	eachDType(g, dts, func(d nn.GPUDType) {
		guard("sd15 vae "+d.String(), func() error {
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
			got, err := dec.Decode(lat)
			if err != nil {
				return err
			}
			compareT(fmt.Sprintf("sd15 vae %s decode [1,4,%d,%d]", d, side, side), got, want, modelTol(d))
			gotLat, err := enc.Encode(img)
			if err != nil {
				return err
			}
			compareT(fmt.Sprintf("sd15 vae %s encode [1,3,%d,%d]", d, 8*side, 8*side), gotLat, wantLat, modelTol(d))
			if timeSide <= 0 {
				return nil
			}
			g.Poison = false
			big := randT(1, 1, 4, timeSide, timeSide)
			bench(g, fmt.Sprintf("sd15 vae %s decode [1,4,%d,%d] -> [1,3,%d,%d] (CPU tensors at the edges)", d, timeSide, timeSide, 8*timeSide, 8*timeSide), 0, 0, func() error {
				_, err := dec.Decode(big)
				return err
			})
			return nil
		})
	})
}

// parseDTypes reads -dtypes ("f32,f16").
func parseDTypes(s string) ([]nn.GPUDType, error) {
	var out []nn.GPUDType
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		switch f {
		case "f32":
			out = append(out, nn.GPUF32)
		case "f16":
			out = append(out, nn.GPUF16)
		default:
			return nil, fmt.Errorf("-dtypes: unknown dtype %q (want f32 and/or f16)", f)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-dtypes: empty")
	}
	return out, nil
}
