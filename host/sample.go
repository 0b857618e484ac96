// sample.go defines what a sampler is here: a pure function that walks a
// latent down a list of sigmas by calling a denoiser callback (k-diffusion
// semantics: D(x; sigma) returns the denoised estimate), drawing fresh noise
// from a NoiseSource when it is stochastic. It holds the sampler table and the
// helpers the samplers share. It does not know about U-Nets, CFG or prompts
// (cfg.go and pipeline.go do).
package host

import (
	"fmt"
	"math"
	"strings"

	"github.com/sdbridge/sdbridge/nn"
)

// Denoiser returns the denoised estimate D(x; sigma) of x [B, C, H, W] at
// noise level sigma, as k-diffusion's wrapped model does.
type Denoiser func(x *nn.Tensor, sigma float64) (*nn.Tensor, error)

// NoiseSource draws standard normal noise of the given shape. The seeded
// generators (TorchNoise, PhiloxNoise) and the golden cases' recorded noise
// implement it.
type NoiseSource interface {
	Next(shape []int) (*nn.Tensor, error)
}

// StepInfo is what a sampler reports after each step.
type StepInfo struct {
	Step, Steps int        // 0-based step just finished, total steps
	Sigma       float64    // sigma at the start of the step
	X           *nn.Tensor // [B, C, H, W] latent after the step
	Denoised    *nn.Tensor // [B, C, H, W] the step's denoised estimate
}

// SampleOptions carries what a sampler needs besides the model and sigmas.
type SampleOptions struct {
	Noise    NoiseSource    // needed by euler_ancestral and dpmpp_2m_sde
	Callback func(StepInfo) // called after each step; may be nil
}

// Sampler walks x (already scaled to sigmas[0]) down sigmas and returns the
// final latent. It does not modify x.
type Sampler func(model Denoiser, x *nn.Tensor, sigmas []float64, opt SampleOptions) (*nn.Tensor, error)

// SamplerNames lists the samplers (ComfyUI/k-diffusion names).
var SamplerNames = []string{"euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "lms"}

// LookupSampler returns the sampler of that name, or an error listing the
// valid names.
func LookupSampler(name string) (Sampler, error) {
	switch name {
	case "euler":
		return SampleEuler, nil
	case "euler_ancestral", "euler_a":
		return SampleEulerAncestral, nil
	case "heun":
		return SampleHeun, nil
	case "dpmpp_2m":
		return SampleDPMPP2M, nil
	case "dpmpp_2m_sde":
		return SampleDPMPP2MSDE, nil
	case "ddim":
		return SampleDDIM, nil
	case "lms":
		return SampleLMS, nil
	}
	return nil, fmt.Errorf("unknown sampler %q (valid: %s)", name, strings.Join(SamplerNames, ", "))
}

// checkSigmas validates the sigma list every sampler walks.
func checkSigmas(x *nn.Tensor, sigmas []float64) error {
	if len(sigmas) < 2 {
		return fmt.Errorf("sampler: need at least 2 sigmas, got %d", len(sigmas))
	}
	for i, s := range sigmas {
		if !(s >= 0) || math.IsInf(s, 0) {
			return fmt.Errorf("sampler: sigma[%d] = %v is not a finite non-negative number", i, s)
		}
	}
	if x == nil || len(x.Data) == 0 {
		return fmt.Errorf("sampler: empty latent")
	}
	return nil
}

// denoise calls the model and checks that it returned a tensor of x's shape.
func denoise(model Denoiser, x *nn.Tensor, sigma float64) (*nn.Tensor, error) {
	d, err := model(x, sigma)
	if err != nil {
		return nil, err
	}
	if d == nil || len(d.Data) != len(x.Data) {
		return nil, fmt.Errorf("sampler: denoiser returned %v for input %v", d, x)
	}
	return d, nil
}

// drawNoise draws noise shaped like x from opt.Noise.
func drawNoise(opt SampleOptions, x *nn.Tensor) (*nn.Tensor, error) {
	if opt.Noise == nil {
		return nil, fmt.Errorf("sampler: this sampler needs a noise source")
	}
	n, err := opt.Noise.Next(x.Shape)
	if err != nil {
		return nil, fmt.Errorf("sampler: noise: %w", err)
	}
	if len(n.Data) != len(x.Data) {
		return nil, fmt.Errorf("sampler: noise source returned %v, want %v", n.Shape, x.Shape)
	}
	return n, nil
}

// toD is k-diffusion to_d: the ODE derivative (x - denoised) / sigma.
func toD(x, denoised *nn.Tensor, sigma float64) *nn.Tensor {
	d := nn.New(x.Shape...)
	for i := range d.Data {
		d.Data[i] = float32((float64(x.Data[i]) - float64(denoised.Data[i])) / sigma)
	}
	return d
}

// axpy returns x + a*y as a new tensor (float64 arithmetic per element).
func axpy(x *nn.Tensor, a float64, y *nn.Tensor) *nn.Tensor {
	out := nn.New(x.Shape...)
	for i := range out.Data {
		out.Data[i] = float32(float64(x.Data[i]) + a*float64(y.Data[i]))
	}
	return out
}

// report calls the callback when there is one.
func report(opt SampleOptions, i int, sigmas []float64, x, denoised *nn.Tensor) {
	if opt.Callback != nil {
		opt.Callback(StepInfo{Step: i, Steps: len(sigmas) - 1, Sigma: sigmas[i], X: x, Denoised: denoised})
	}
}
