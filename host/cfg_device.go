// cfg_device.go: the CFG denoiser's hand-off on a GPU. When the U-Net runs
// on the device and the residual source writes its residuals into device
// memory (a ControlNetSource given the pipeline's GPU), the residuals go
// from the plugin's output buffers straight into the U-Net (no download
// and re-upload per step). When the Conditioner's context is on the device
// too (ELLAConditioner given the GPU: ContextGPU), the halves are batched
// on the device (DtoD) and that one device context feeds both the
// ControlNet (ResidualsGPUContext) and the U-Net, so it never goes to the
// host. x and eps still cross as CPU tensors, as the samplers run on the
// CPU. Any piece without a device path (a host residual source, a CPU
// U-Net) keeps the whole step on the host hand-off.
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
	dctx, err := u.g.Upload(ctx) // [N, L, D]
	if err != nil {
		return nil, fmt.Errorf("unet (cuda): uploading the context: %w", err)
	}
	defer dctx.Free()
	return u.forward(x, ts, dctx, res)
}

// gpuConditioner is a Conditioner whose contexts live in device memory.
type gpuConditioner interface {
	ContextGPU(ctx context.Context, t float32, cond bool) (*nn.GPUTensor, error)
	// contextOnGPU reports whether ContextGPU is available.
	contextOnGPU() bool
}

// gpuContextSource is a residual source that takes the context on the
// device.
type gpuContextSource interface {
	gpuResidualSource
	ResidualsGPUContext(ctx context.Context, x *nn.Tensor, t []float32, context *nn.GPUTensor) (models.GPUResiduals, error)
}

// gpuContextModel is an EpsModel on a GPU that takes the context and the
// residuals in device memory (CPU x in, CPU eps out).
type gpuContextModel interface {
	forwardGPUContext(x *nn.Tensor, ts []float32, ctx *nn.GPUTensor, res models.GPUResiduals) (*nn.Tensor, error)
	// gpu is the device the model runs on.
	gpu() *nn.GPU
}

var (
	_ gpuConditioner   = (*ELLAConditioner)(nil)
	_ gpuContextSource = (*ControlNetSource)(nil)
	_ gpuContextModel  = oomUNet{}
)

// contextOnGPU implements gpuConditioner.
func (e *ELLAConditioner) contextOnGPU() bool { return e.opt.GPU != nil }

// guidedEpsDeviceContext is guidedEps with the Conditioner's contexts on
// the device; ok is false when the conditioner, the model or the residual
// source (if any) has no device path (the caller takes the host one).
func (c *CFGDenoiser) guidedEpsDeviceContext(ctx context.Context, scaled *nn.Tensor, t float32) (epsU, epsC *nn.Tensor, ok bool, err error) {
	gc, cok := c.Conditioner.(gpuConditioner)
	m, mok := c.Model.(gpuContextModel)
	if !cok || !mok || !gc.contextOnGPU() {
		return nil, nil, false, nil
	}
	var src gpuContextSource
	if c.Residuals != nil {
		s, sok := c.Residuals.(gpuContextSource)
		if !sok || !s.residualsOnGPU() {
			return nil, nil, false, nil
		}
		src = s
	}
	cond, err := gc.ContextGPU(ctx, t, true) // [1, L, D]
	if err != nil {
		return nil, nil, true, fmt.Errorf("conditioning (cond): %w", err)
	}
	var uncond *nn.GPUTensor // [1, L', D]
	if c.Scale != 1 {
		if uncond, err = gc.ContextGPU(ctx, t, false); err != nil {
			return nil, nil, true, fmt.Errorf("conditioning (uncond): %w", err)
		}
	}
	g := m.gpu()
	switch {
	case c.Scale == 1:
		epsC, err = c.epsDeviceContext(ctx, g, src, m, scaled, t, cond)
	case cond.Shape[1] == uncond.Shape[1]:
		// One batched call: [uncond, cond] -> [2B, ...].
		var eps *nn.Tensor
		if eps, err = c.epsDeviceContext(ctx, g, src, m, nn.Concat(0, scaled, scaled), t, uncond, cond); err == nil { // [2B, C, H, W]
			epsU, epsC = splitHalves(eps, scaled.Shape)
		}
	default:
		// Contexts of different lengths cannot share a batch.
		if epsU, err = c.epsDeviceContext(ctx, g, src, m, scaled, t, uncond); err == nil {
			epsC, err = c.epsDeviceContext(ctx, g, src, m, scaled, t, cond)
		}
	}
	return epsU, epsC, true, err
}

// epsDeviceContext runs the residual source (if any) and the model on x
// [N, C, H, W] with the context made of parts (each [1, L, D], repeated to
// N/len(parts) rows, in order) on the device.
func (c *CFGDenoiser) epsDeviceContext(ctx context.Context, g *nn.GPU, src gpuContextSource, m gpuContextModel, x *nn.Tensor, t float32, parts ...*nn.GPUTensor) (*nn.Tensor, error) {
	n := x.Shape[0]
	dctx, owned, err := stackContexts(g, n/len(parts), parts...) // [N, L, D]
	if err != nil {
		return nil, err
	}
	if owned {
		defer dctx.Free()
	}
	ts := make([]float32, n) // [N]
	for i := range ts {
		ts[i] = t
	}
	var res models.GPUResiduals
	if src != nil {
		if res, err = src.ResidualsGPUContext(ctx, x, ts, dctx); err != nil { // views of the source's buffers; nil when no net ran
			return nil, fmt.Errorf("residuals: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	eps, err := m.forwardGPUContext(x, ts, dctx, res) // [N, C, H, W]
	if err != nil {
		return nil, err
	}
	if len(eps.Data) != len(x.Data) {
		return nil, fmt.Errorf("cfg: model returned %v for input %v", eps.Shape, x.Shape)
	}
	return eps, nil
}

// stackContexts returns the device context [len(parts)*b, L, D]: each part
// [1, L, D] repeated b times, in order, copied on the device (owned: the
// caller frees it), or the single part itself when there is one row.
func stackContexts(g *nn.GPU, b int, parts ...*nn.GPUTensor) (out *nn.GPUTensor, owned bool, err error) {
	p0 := parts[0]
	for _, p := range parts {
		if len(p.Shape) != 3 || p.Shape[0] != 1 || p.Shape[1] != p0.Shape[1] || p.Shape[2] != p0.Shape[2] || p.DType != g.DType {
			return nil, false, fmt.Errorf("cfg: device contexts %v (%s) and %v (%s) do not stack in %s", p0.Shape, p0.DType, p.Shape, p.DType, g.DType)
		}
	}
	if len(parts) == 1 && b == 1 {
		return p0, false, nil
	}
	out, err = g.Empty(len(parts)*b, p0.Shape[1], p0.Shape[2]) // [len(parts)*b, L, D]
	if err != nil {
		return nil, false, fmt.Errorf("cfg: device context: %w", err)
	}
	row := p0.Bytes()
	for i := range len(parts) * b {
		dst, err := out.Buf.Slice(i*row, row)
		if err == nil {
			err = dst.CopyFrom(parts[i/b].Buf, row)
		}
		if err != nil {
			out.Free()
			return nil, false, fmt.Errorf("cfg: batching the device context: %w", err)
		}
	}
	return out, true, nil
}

// gpu implements gpuContextModel.
func (u deviceUNet) gpu() *nn.GPU { return u.g }

// forwardGPUContext implements gpuContextModel: x [N, C, H, W] is uploaded,
// the context [N, L, D] and the residuals used in place.
func (u deviceUNet) forwardGPUContext(x *nn.Tensor, ts []float32, ctx *nn.GPUTensor, res models.GPUResiduals) (*nn.Tensor, error) {
	if ctx.DType != u.g.DType || ctx.Buf.Device() != u.g.Dev {
		return nil, fmt.Errorf("unet (cuda): the context is %s on %s, the u-net runs in %s on %s", ctx.DType, ctx.Buf.Device(), u.g.DType, u.g.Dev)
	}
	return u.forward(x, ts, ctx, res)
}

// forward uploads x [N, C, H, W], runs the U-Net on the device context
// [N, L, D] and residuals, and downloads eps [N, C, H, W].
func (u deviceUNet) forward(x *nn.Tensor, ts []float32, ctx *nn.GPUTensor, res models.GPUResiduals) (*nn.Tensor, error) {
	dx, err := u.g.Upload(x) // [N, C, H, W]
	if err != nil {
		return nil, fmt.Errorf("unet (cuda): uploading x: %w", err)
	}
	defer dx.Free()
	y, err := u.ForwardGPU(dx, ts, ctx, res) // [N, C, H, W]
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
