// unet.go: the whole SD1.5 U-Net on the GPU (fp32, random weights from
// models.NewRandomSource with the real layout, as `sdbridge bench` binds
// them): checked against the CPU models.UNet at a small latent, then one
// CFG step (batch 2) timed at the 512px latent [2, 4, 64, 64]. The forward
// walks models.UNet's blocks exactly as UNet.Forward does, using the layer
// compositions of stack.go; it has no ControlNet residuals and belongs in
// models once models has a device path.
package main

import (
	"fmt"
	"time"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// block follows models.TimestepBlock.forwardTo: th, tw > 0 resize an
// Upsample to the next skip's size, else it doubles.
func (r *gpuRun) block(b *models.TimestepBlock, x, emb, ctx *nn.GPUTensor, th, tw int) *nn.GPUTensor {
	for _, l := range b.Layers {
		if r.err != nil {
			return nil
		}
		switch l := l.(type) {
		case *models.InputConv:
			x = r.conv(x, l.Conv)
		case *models.ResBlock:
			x = r.resBlock(l, x, emb)
		case *models.SpatialTransformer:
			x = r.spatialTransformer(l, x, ctx)
		case *models.Downsample:
			x = r.conv(x, l.Op)
		case *models.Upsample:
			h, w := 2*x.Shape[2], 2*x.Shape[3]
			if th > 0 {
				h, w = th, tw
			}
			x = r.keep(r.g.UpsampleNearest(x, h, w)) // [B, C, h, w]
			if r.err == nil {
				x = r.conv(x, l.Conv)
			}
		default:
			r.do(fmt.Errorf("%s: layer %T has no GPU path", b.Name, l))
		}
	}
	return x
}

// unet follows models.UNet.Forward (no residuals).
func (r *gpuRun) unet(u *models.UNet, x *nn.GPUTensor, timesteps []float32, ctx *nn.GPUTensor) *nn.GPUTensor {
	// timestep_embedding on the CPU (tiny), the MLP on the GPU
	s := nn.TimestepEmbedding(timesteps, u.TimeEmbed.Channels, true, 0, 10000) // [B, mc]
	emb := r.keep(r.g.Upload(s))
	emb = r.linear(emb, u.TimeEmbed.Linear1) // [B, 4mc]
	if r.err != nil {
		return nil
	}
	r.do(r.g.SiLU(emb))
	emb = r.linear(emb, u.TimeEmbed.Linear2) // [B, 4mc]
	h := x
	var skips []*nn.GPUTensor
	for _, b := range u.InputBlocks {
		h = r.block(b, h, emb, ctx, 0, 0) // [B, C_i, H_i, W_i]
		skips = append(skips, h)
	}
	h = r.block(u.MiddleBlock, h, emb, ctx, 0, 0)
	for k, b := range u.OutputBlocks {
		if r.err != nil {
			return nil
		}
		i := len(skips) - 1 - k
		h = r.keep(r.g.ConcatChannels(h, skips[i])) // [B, C + C_i, H_i, W_i]
		th, tw := 0, 0
		if i > 0 {
			th, tw = skips[i-1].Shape[2], skips[i-1].Shape[3]
		}
		h = r.block(b, h, emb, ctx, th, tw)
	}
	if r.err != nil {
		return nil
	}
	h = r.groupNorm(h, u.OutNorm, true) // [B, mc, H, W]
	if r.err != nil {
		return nil
	}
	return r.conv(h, u.OutConv) // [B, out, H, W]
}

// checkAndTimeUNet binds the SD1.5 U-Net on random weights, compares GPU
// with CPU at a side x side latent (batch 2), and times a CFG step at
// timeSide (0 skips the timing).
func checkAndTimeUNet(g *nn.GPU, side, timeSide int) {
	guard("sd15 unet", func() error {
		t0 := time.Now()
		src := models.NewRandomSource(models.SD15().Specs(safetensors.F16), 1)
		u, err := models.LoadUNet(models.NewWeights(src).Sub("model.diffusion_model."))
		if err != nil {
			return err
		}
		logf("sd15 unet: random weights bound in %.1f s", time.Since(t0).Seconds())
		r := newGPURun(g)
		defer r.close()
		ts := []float32{500, 500}
		ctxT := randT(1, 2, 77, 768) // [2, 77, 768]
		name := fmt.Sprintf("sd15 unet fp32 x [2,4,%d,%d] t=500 ctx [2,77,768]", side, side)
		x := randT(1, 2, 4, side, side)
		t1 := time.Now()
		want, err := u.Forward(x, ts, ctxT, nil)
		if err != nil {
			return err
		}
		cpu := time.Since(t1)
		dx, dctx := r.w(x), r.w(ctxT)
		t2 := time.Now()
		y := r.unet(u, dx, ts, dctx)
		if r.err != nil {
			return r.err
		}
		got := down(y)
		logf("sd15 unet at %dx%d: CPU %.2f s, GPU first call (uploads weights) %.2f s", side, side, cpu.Seconds(), time.Since(t2).Seconds())
		compare(name, got, want.Data, 1e-4)
		r.release()
		if timeSide <= 0 {
			return nil
		}
		xt := r.w(randT(1, 2, 4, timeSide, timeSide))
		bench(g, fmt.Sprintf("sd15 unet CFG step fp32 [2,4,%d,%d] (whole U-Net, unfused, allocs per op)", timeSide, timeSide), 1.606e12*float64(timeSide*timeSide)/4096, 0, func() error {
			r.unet(u, xt, ts, dctx)
			r.release()
			return r.err
		})
		return nil
	})
}
