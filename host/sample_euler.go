// sample_euler.go holds the first-order samplers and Heun, transcribed from
// k-diffusion's sampling.py: sample_euler (s_churn = 0), sample_euler_ancestral
// (eta = 1, s_noise = 1), sample_heun (s_churn = 0), and ddim.
//
// ddim follows ComfyUI, whose "ddim" sampler is k-diffusion's Euler: DDIM with
// eta = 0 is exactly an Euler step of the probability-flow ODE in the
// k-diffusion parameterisation (x_sigma = x0 + sigma*eps), so the two agree to
// rounding. The DDIM timestep spacing is a schedule choice ("ddim_uniform"),
// not a sampler. It does not implement churn (s_churn > 0) or eta != 1.
package host

import (
	"math"

	"github.com/sdbridge/sdbridge/nn"
)

// SampleEuler is k-diffusion sample_euler with no churn:
// d = (x - D(x, s_i)) / s_i; x += d * (s_{i+1} - s_i).
func SampleEuler(model Denoiser, x *nn.Tensor, sigmas []float64, opt SampleOptions) (*nn.Tensor, error) {
	if err := checkSigmas(x, sigmas); err != nil {
		return nil, err
	}
	for i := range len(sigmas) - 1 {
		denoised, err := denoise(model, x, sigmas[i]) // [B, C, H, W]
		if err != nil {
			return nil, err
		}
		d := toD(x, denoised, sigmas[i])      // [B, C, H, W]
		x = axpy(x, sigmas[i+1]-sigmas[i], d) // [B, C, H, W]
		report(opt, i, sigmas, x, denoised)
	}
	return x, nil
}

// SampleDDIM is ComfyUI's ddim: the Euler sampler (see the file comment).
func SampleDDIM(model Denoiser, x *nn.Tensor, sigmas []float64, opt SampleOptions) (*nn.Tensor, error) {
	return SampleEuler(model, x, sigmas, opt)
}

// AncestralStep is k-diffusion get_ancestral_step: the deterministic target
// sigmaDown and the noise sigmaUp that together reach sigmaTo.
func AncestralStep(sigmaFrom, sigmaTo, eta float64) (sigmaDown, sigmaUp float64) {
	if eta == 0 {
		return sigmaTo, 0
	}
	sigmaUp = min(sigmaTo, eta*math.Sqrt(sigmaTo*sigmaTo*(sigmaFrom*sigmaFrom-sigmaTo*sigmaTo)/(sigmaFrom*sigmaFrom)))
	sigmaDown = math.Sqrt(sigmaTo*sigmaTo - sigmaUp*sigmaUp)
	return sigmaDown, sigmaUp
}

// SampleEulerAncestral is k-diffusion sample_euler_ancestral with eta = 1:
// an Euler step to sigma_down, then noise * sigma_up added, except at the
// last step (sigma_{i+1} = 0), which draws no noise.
func SampleEulerAncestral(model Denoiser, x *nn.Tensor, sigmas []float64, opt SampleOptions) (*nn.Tensor, error) {
	if err := checkSigmas(x, sigmas); err != nil {
		return nil, err
	}
	for i := range len(sigmas) - 1 {
		denoised, err := denoise(model, x, sigmas[i]) // [B, C, H, W]
		if err != nil {
			return nil, err
		}
		down, up := AncestralStep(sigmas[i], sigmas[i+1], 1)
		d := toD(x, denoised, sigmas[i]) // [B, C, H, W]
		x = axpy(x, down-sigmas[i], d)   // [B, C, H, W]
		if sigmas[i+1] > 0 {
			noise, err := drawNoise(opt, x) // [B, C, H, W]
			if err != nil {
				return nil, err
			}
			x = axpy(x, up, noise)
		}
		report(opt, i, sigmas, x, denoised)
	}
	return x, nil
}

// SampleHeun is k-diffusion sample_heun with no churn: Heun's second-order
// step, falling back to Euler for the step to sigma = 0.
func SampleHeun(model Denoiser, x *nn.Tensor, sigmas []float64, opt SampleOptions) (*nn.Tensor, error) {
	if err := checkSigmas(x, sigmas); err != nil {
		return nil, err
	}
	for i := range len(sigmas) - 1 {
		denoised, err := denoise(model, x, sigmas[i]) // [B, C, H, W]
		if err != nil {
			return nil, err
		}
		d := toD(x, denoised, sigmas[i]) // [B, C, H, W]
		dt := sigmas[i+1] - sigmas[i]
		if sigmas[i+1] == 0 {
			x = axpy(x, dt, d)
		} else {
			x2 := axpy(x, dt, d)                              // [B, C, H, W]
			denoised2, err := denoise(model, x2, sigmas[i+1]) // [B, C, H, W]
			if err != nil {
				return nil, err
			}
			d2 := toD(x2, denoised2, sigmas[i+1]) // [B, C, H, W]
			next := nn.New(x.Shape...)
			for j := range next.Data {
				dPrime := (float64(d.Data[j]) + float64(d2.Data[j])) / 2
				next.Data[j] = float32(float64(x.Data[j]) + dPrime*dt)
			}
			x = next
		}
		report(opt, i, sigmas, x, denoised)
	}
	return x, nil
}
