// sample_dpmpp.go holds DPM-Solver++ samplers transcribed from k-diffusion's
// sampling.py: sample_dpmpp_2m and sample_dpmpp_2m_sde (solver_type
// "midpoint", eta = 1, s_noise = 1). Both work in t = -log(sigma).
//
// The SDE sampler's noise for a step sigma -> sigma_next is Brownian-tree
// noise (brownian_noise.go: k-diffusion's BrownianTreeNoiseSampler, the
// default of k-diffusion and ComfyUI) when the NoiseSource offers it
// (BrownianNoiseSource), so a seeded image matches ComfyUI's; otherwise one
// standard normal draw per step from the NoiseSource (recorded noise in the
// golden cases, the A1111 convention). It does not implement the "heun"
// solver type or eta != 1.
package host

import (
	"fmt"
	"math"

	"github.com/sdbridge/sdbridge/nn"
)

// SampleDPMPP2M is k-diffusion sample_dpmpp_2m (DPM-Solver++(2M)).
func SampleDPMPP2M(model Denoiser, x *nn.Tensor, sigmas []float64, opt SampleOptions) (*nn.Tensor, error) {
	if err := checkSigmas(x, sigmas); err != nil {
		return nil, err
	}
	tOf := func(sigma float64) float64 { return -math.Log(sigma) } // t_fn
	var old *nn.Tensor                                             // previous denoised, [B, C, H, W]
	for i := range len(sigmas) - 1 {
		denoised, err := denoise(model, x, sigmas[i]) // [B, C, H, W]
		if err != nil {
			return nil, err
		}
		next := nn.New(x.Shape...) // [B, C, H, W]
		if sigmas[i+1] == 0 {
			// h = inf: sigma_fn(t_next)/sigma_fn(t) = 0 and -expm1(-h) = 1.
			copy(next.Data, denoised.Data)
		} else {
			t, tNext := tOf(sigmas[i]), tOf(sigmas[i+1])
			h := tNext - t
			ratio := sigmas[i+1] / sigmas[i] // sigma_fn(t_next) / sigma_fn(t)
			coef := -math.Expm1(-h)
			if old == nil {
				for j := range next.Data {
					next.Data[j] = float32(ratio*float64(x.Data[j]) + coef*float64(denoised.Data[j]))
				}
			} else {
				hLast := t - tOf(sigmas[i-1])
				r := hLast / h
				a, b := 1+1/(2*r), 1/(2*r)
				for j := range next.Data {
					dd := a*float64(denoised.Data[j]) - b*float64(old.Data[j])
					next.Data[j] = float32(ratio*float64(x.Data[j]) + coef*dd)
				}
			}
		}
		x, old = next, denoised
		report(opt, i, sigmas, x, denoised)
	}
	return x, nil
}

// SampleDPMPP2MSDE is k-diffusion sample_dpmpp_2m_sde with the midpoint
// solver and eta = 1; the step to sigma = 0 returns the denoised estimate.
func SampleDPMPP2MSDE(model Denoiser, x *nn.Tensor, sigmas []float64, opt SampleOptions) (*nn.Tensor, error) {
	if err := checkSigmas(x, sigmas); err != nil {
		return nil, err
	}
	const eta = 1.0
	stepNoise := sdeNoise(opt, x, sigmas)
	var old *nn.Tensor // previous denoised, [B, C, H, W]
	var hLast float64
	for i := range len(sigmas) - 1 {
		denoised, err := denoise(model, x, sigmas[i]) // [B, C, H, W]
		if err != nil {
			return nil, err
		}
		var h float64
		next := nn.New(x.Shape...) // [B, C, H, W]
		if sigmas[i+1] == 0 {
			copy(next.Data, denoised.Data)
		} else {
			t, s := -math.Log(sigmas[i]), -math.Log(sigmas[i+1])
			h = s - t
			etaH := eta * h
			ratio := sigmas[i+1] / sigmas[i] * math.Exp(-etaH)
			coef := -math.Expm1(-h - etaH)
			for j := range next.Data {
				next.Data[j] = float32(ratio*float64(x.Data[j]) + coef*float64(denoised.Data[j]))
			}
			if old != nil {
				r := hLast / h
				c := 0.5 * coef * (1 / r) // midpoint correction
				for j := range next.Data {
					next.Data[j] = float32(float64(next.Data[j]) + c*(float64(denoised.Data[j])-float64(old.Data[j])))
				}
			}
			noise, err := stepNoise(sigmas[i], sigmas[i+1]) // [B, C, H, W]
			if err != nil {
				return nil, err
			}
			scale := sigmas[i+1] * math.Sqrt(-math.Expm1(-2*etaH))
			for j := range next.Data {
				next.Data[j] = float32(float64(next.Data[j]) + scale*float64(noise.Data[j]))
			}
		}
		x, old, hLast = next, denoised, h
		report(opt, i, sigmas, x, denoised)
	}
	return x, nil
}

// sdeNoise returns the noise function of an SDE sampler: Brownian-tree noise
// over [min positive sigma, max sigma] when opt.Noise is a
// BrownianNoiseSource, else one draw from opt.Noise per call. The tree is
// built on the first call, so schedules whose only step ends at 0 need none.
func sdeNoise(opt SampleOptions, x *nn.Tensor, sigmas []float64) func(sigma, sigmaNext float64) (*nn.Tensor, error) {
	bs, ok := opt.Noise.(BrownianNoiseSource)
	if !ok {
		return func(float64, float64) (*nn.Tensor, error) { return drawNoise(opt, x) }
	}
	var tree IntervalNoise
	return func(sigma, sigmaNext float64) (*nn.Tensor, error) {
		if tree == nil {
			sigmaMin, sigmaMax := math.Inf(1), 0.0
			for _, s := range sigmas {
				if s > 0 {
					sigmaMin = min(sigmaMin, s)
				}
				sigmaMax = max(sigmaMax, s)
			}
			t, err := bs.BrownianNoise(x.Shape, sigmaMin, sigmaMax)
			if err != nil {
				return nil, fmt.Errorf("sampler: %w", err)
			}
			tree = t
		}
		n, err := tree.Between(sigma, sigmaNext)
		if err != nil {
			return nil, fmt.Errorf("sampler: %w", err)
		}
		if len(n.Data) != len(x.Data) {
			return nil, fmt.Errorf("sampler: Brownian noise has shape %v, want %v", n.Shape, x.Shape)
		}
		return n, nil
	}
}
