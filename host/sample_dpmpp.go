// sample_dpmpp.go holds DPM-Solver++ samplers transcribed from k-diffusion's
// sampling.py: sample_dpmpp_2m and sample_dpmpp_2m_sde (solver_type
// "midpoint", eta = 1, s_noise = 1). Both work in t = -log(sigma).
//
// The SDE sampler's noise comes from the NoiseSource, one standard normal draw
// per step. k-diffusion and ComfyUI default to a Brownian-tree noise sampler
// (torchsde), whose draws are also standard normal per step but come from a
// different generator, so seeded images differ from ComfyUI's for this sampler
// only; the golden cases inject their noise. It does not implement the "heun"
// solver type or eta != 1.
package host

import (
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
			noise, err := drawNoise(opt, x) // [B, C, H, W]
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
