// cfg.go turns an eps-predicting U-Net into the k-diffusion denoiser the
// samplers call, with classifier-free guidance: CompVisDenoiser semantics
// (input scaled by c_in = 1/sqrt(sigma^2+1), continuous timestep t from
// log-sigma interpolation, denoised = x - sigma*eps) and one batched U-Net
// call on [uncond, cond] (batch 2B) combined as u + cfg*(c - u). The per-step
// plugin hooks (a Conditioner that replaces the context, a ResidualSource
// that adds named residuals) are consumed here, and ScheduleTimesteps
// tells a ScheduleConditioner the timesteps ahead of sampling; on a GPU the residuals
// and a Conditioner's context may stay in device memory (cfg_device.go). It
// does not encode prompts or draw noise.
package host

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
)

// EpsModel predicts the noise of x [N, C, H, W] at timesteps [N] under
// context [N, L, D], with optional named residuals ("input_blocks.N",
// "middle_block"). *models.UNet implements it.
type EpsModel interface {
	Forward(x *nn.Tensor, timesteps []float32, ctx *nn.Tensor, res models.Residuals) (*nn.Tensor, error)
}

// Conditioner replaces the prompt context at every step (ELLA): it returns
// the context [1, L, D] for the conditional (cond = true) or unconditional
// half at U-Net timestep t.
type Conditioner interface {
	Context(ctx context.Context, t float32, cond bool) (*nn.Tensor, error)
}

// ScheduleConditioner is a Conditioner that can compute the contexts of
// a whole schedule before sampling (ELLA: one batched connector call per
// half). The pipeline passes the U-Net timesteps its sampler will use
// (CFGDenoiser.ScheduleTimesteps) and whether the uncond half is needed;
// Context must still answer at any other timestep.
type ScheduleConditioner interface {
	Conditioner
	PrepareSchedule(ctx context.Context, ts []float32, uncond bool) error
}

// ResidualSource gives residuals at every step (ControlNet). It sees exactly
// what the U-Net sees: the scaled input x [N, C, H, W], the timesteps [N] and
// the context [N, L, D] (N = 2B with CFG: the uncond half first), and returns
// residuals shaped for that batch, named by U-Net block.
type ResidualSource interface {
	Residuals(ctx context.Context, x *nn.Tensor, t []float32, context *nn.Tensor) (models.Residuals, error)
}

// CFGDenoiser is the guided denoiser over an eps model.
type CFGDenoiser struct {
	Model    EpsModel
	Schedule *DiscreteSchedule
	Scale    float64    // guidance scale; 1 runs the conditional half only
	Cond     *nn.Tensor // [B, L, D] prompt context (unused with a Conditioner)
	Uncond   *nn.Tensor // [B, L', D] negative prompt context
	// Optional hooks.
	Conditioner Conditioner
	Residuals   ResidualSource
	Ctx         context.Context // cancels a generation between U-Net calls
}

// Denoise implements Denoiser: D(x; sigma) for x [B, C, H, W].
func (c *CFGDenoiser) Denoise(x *nn.Tensor, sigma float64) (*nn.Tensor, error) {
	ctx := c.Ctx
	if ctx == nil {
		ctx = context.Background()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t := c.timestep(sigma)
	cIn := float32(1 / math.Sqrt(sigma*sigma+1))
	scaled := x.Clone() // [B, C, H, W]
	nn.Scale(scaled, cIn)

	epsU, epsC, ok, err := c.guidedEpsDeviceContext(ctx, scaled, t) // [B, C, H, W] each
	if !ok && err == nil {
		epsU, epsC, err = c.guidedEps(ctx, scaled, t)
	}
	if err != nil {
		return nil, err
	}
	out := nn.New(x.Shape...) // [B, C, H, W] denoised = x - sigma*eps
	for i := range out.Data {
		e := float64(epsC.Data[i])
		if epsU != nil {
			u := float64(epsU.Data[i])
			e = u + c.Scale*(e-u)
		}
		out.Data[i] = float32(float64(x.Data[i]) - sigma*e)
	}
	return out, nil
}

// guidedEps runs the model on the uncond and cond halves of scaled [B, C,
// H, W] at timestep t with host contexts (epsU is nil when Scale is 1).
func (c *CFGDenoiser) guidedEps(ctx context.Context, scaled *nn.Tensor, t float32) (epsU, epsC *nn.Tensor, err error) {
	cond, uncond, err := c.contexts(ctx, t, scaled.Shape[0])
	if err != nil {
		return nil, nil, err
	}
	switch {
	case c.Scale == 1:
		epsC, err = c.eps(ctx, scaled, t, cond)
	case cond.Shape[1] == uncond.Shape[1]:
		// One batched call: [uncond, cond] -> [2B, ...].
		var eps *nn.Tensor
		if eps, err = c.eps(ctx, nn.Concat(0, scaled, scaled), t, nn.Concat(0, uncond, cond)); err == nil { // [2B, C, H, W]
			epsU, epsC = splitHalves(eps, scaled.Shape)
		}
	default:
		// Contexts of different lengths cannot share a batch.
		if epsU, err = c.eps(ctx, scaled, t, uncond); err == nil {
			epsC, err = c.eps(ctx, scaled, t, cond)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	return epsU, epsC, nil
}

// splitHalves splits eps [2B, C, H, W] into its [uncond, cond] halves of
// shape (each [B, C, H, W], views).
func splitHalves(eps *nn.Tensor, shape []int) (u, c *nn.Tensor) {
	half := len(eps.Data) / 2
	return nn.From(eps.Data[:half], shape...), nn.From(eps.Data[half:], shape...)
}

// timestep is the U-Net timestep of sigma (CompVisDenoiser's continuous
// t), exactly as Denoise passes it to the model and the Conditioner.
func (c *CFGDenoiser) timestep(sigma float64) float32 {
	return float32(c.Schedule.SigmaToT(sigma))
}

// ScheduleTimesteps lists the timesteps Denoise uses at the positive
// sigmas of a schedule (the points every sampler evaluates; sigma 0 is
// never evaluated), in order, without repeats.
func (c *CFGDenoiser) ScheduleTimesteps(sigmas []float64) []float32 {
	var ts []float32 // [S]
	for _, s := range sigmas {
		if !(s > 0) {
			continue
		}
		if t := c.timestep(s); !slices.Contains(ts, t) {
			ts = append(ts, t)
		}
	}
	return ts
}

// contexts returns the cond and uncond contexts for this step, repeated to
// the batch size b: [b, L, D] each.
func (c *CFGDenoiser) contexts(ctx context.Context, t float32, b int) (cond, uncond *nn.Tensor, err error) {
	cond, uncond = c.Cond, c.Uncond
	if c.Conditioner != nil {
		if cond, err = c.Conditioner.Context(ctx, t, true); err != nil {
			return nil, nil, fmt.Errorf("conditioning (cond): %w", err)
		}
		if c.Scale != 1 {
			if uncond, err = c.Conditioner.Context(ctx, t, false); err != nil {
				return nil, nil, fmt.Errorf("conditioning (uncond): %w", err)
			}
		}
	}
	if cond == nil || (uncond == nil && c.Scale != 1) {
		return nil, nil, fmt.Errorf("cfg: missing prompt context")
	}
	if cond, err = repeatBatch(cond, b); err != nil {
		return nil, nil, fmt.Errorf("cfg: cond context: %w", err)
	}
	if uncond != nil {
		if uncond, err = repeatBatch(uncond, b); err != nil {
			return nil, nil, fmt.Errorf("cfg: uncond context: %w", err)
		}
	}
	return cond, uncond, nil
}

// eps runs the residual source (if any) and the model on one batch.
func (c *CFGDenoiser) eps(ctx context.Context, x *nn.Tensor, t float32, context *nn.Tensor) (*nn.Tensor, error) {
	n := x.Shape[0]
	ts := make([]float32, n) // [N]
	for i := range ts {
		ts[i] = t
	}
	if eps, ok, err := c.epsGPU(ctx, x, ts, context); ok {
		if err != nil {
			return nil, err
		}
		if len(eps.Data) != len(x.Data) {
			return nil, fmt.Errorf("cfg: model returned %v for input %v", eps.Shape, x.Shape)
		}
		return eps, nil
	}
	var res models.Residuals
	if c.Residuals != nil {
		var err error
		if res, err = c.Residuals.Residuals(ctx, x, ts, context); err != nil {
			return nil, fmt.Errorf("residuals: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	eps, err := c.Model.Forward(x, ts, context, res) // [N, C, H, W]
	if err != nil {
		return nil, err
	}
	if len(eps.Data) != len(x.Data) {
		return nil, fmt.Errorf("cfg: model returned %v for input %v", eps.Shape, x.Shape)
	}
	return eps, nil
}

// repeatBatch returns t [1 or b, L, D] as [b, L, D].
func repeatBatch(t *nn.Tensor, b int) (*nn.Tensor, error) {
	if len(t.Shape) != 3 {
		return nil, fmt.Errorf("context shape %v, want [B, L, D]", t.Shape)
	}
	switch t.Shape[0] {
	case b:
		return t, nil
	case 1:
		parts := make([]*nn.Tensor, b)
		for i := range parts {
			parts[i] = t
		}
		return nn.Concat(0, parts...), nil
	}
	return nil, fmt.Errorf("context batch %d, want 1 or %d", t.Shape[0], b)
}
