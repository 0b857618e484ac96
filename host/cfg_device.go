// cfg_device.go: the CFG denoiser's hand-off on a GPU. When the U-Net runs
// on the device and the residual source writes its residuals into device
// memory (a ControlNetSource given the pipeline's GPU), the residuals go
// from the plugin's output buffers straight into the U-Net (no download
// and re-upload per step); x and the context still cross as CPU tensors,
// as the samplers run on the CPU. It does not hand ELLA's context over on
// the device (a few hundred KB per step; ELLAConditioner.Context downloads
// it).
package host

import (
	"context"
	"fmt"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
)

// gpuResidualSource is a ResidualSource whose residuals can stay in device
// memory.
type gpuResidualSource interface {
	ResidualsGPU(ctx context.Context, x *nn.Tensor, t []float32, context *nn.Tensor) (models.GPUResiduals, error)
	// residualsOnGPU reports whether ResidualsGPU is available (the source
	// was given a GPU).
	residualsOnGPU() bool
}

// gpuResidualModel is an EpsModel on a GPU that takes residuals in device
// memory (CPU x and context in, CPU eps out).
type gpuResidualModel interface {
	forwardGPUResiduals(x *nn.Tensor, ts []float32, ctx *nn.Tensor, res models.GPUResiduals) (*nn.Tensor, error)
}

// residualsOnGPU implements gpuResidualSource.
func (s *ControlNetSource) residualsOnGPU() bool { return s.opt.GPU != nil }

// epsGPU is CFGDenoiser.eps with the residuals kept on the device; ok is
// false when the model or the source cannot (the caller takes the CPU
// hand-off).
func (c *CFGDenoiser) epsGPU(ctx context.Context, x *nn.Tensor, ts []float32, context *nn.Tensor) (eps *nn.Tensor, ok bool, err error) {
	src, sok := c.Residuals.(gpuResidualSource)
	m, mok := c.Model.(gpuResidualModel)
	if !sok || !mok || !src.residualsOnGPU() {
		return nil, false, nil
	}
	res, err := src.ResidualsGPU(ctx, x, ts, context) // views of the source's buffers; nil when no net ran
	if err != nil {
		return nil, true, fmt.Errorf("residuals: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, true, err
	}
	eps, err = m.forwardGPUResiduals(x, ts, context, res) // [N, C, H, W]
	return eps, true, err
}

// deviceUNet is the pipeline's U-Net on the GPU: models.UNetCUDA plus the
// hand-off of device residuals.
type deviceUNet struct {
	*models.UNetCUDA
	g *nn.GPU
}

// forwardGPUResiduals implements gpuResidualModel: x [N, C, H, W] and ctx
// [N, L, D] are uploaded in the GPU's dtype, the residuals used in place.
func (u deviceUNet) forwardGPUResiduals(x *nn.Tensor, ts []float32, ctx *nn.Tensor, res models.GPUResiduals) (*nn.Tensor, error) {
	dx, err := u.g.Upload(x) // [N, C, H, W]
	if err != nil {
		return nil, fmt.Errorf("unet (cuda): uploading x: %w", err)
	}
	defer dx.Free()
	dctx, err := u.g.Upload(ctx) // [N, L, D]
	if err != nil {
		return nil, fmt.Errorf("unet (cuda): uploading the context: %w", err)
	}
	defer dctx.Free()
	y, err := u.ForwardGPU(dx, ts, dctx, res) // [N, C, H, W]
	if err != nil {
		return nil, err
	}
	defer y.Free()
	out, err := y.Download()
	if err != nil {
		return nil, fmt.Errorf("unet (cuda): downloading eps: %w", err)
	}
	return out, nil
}
