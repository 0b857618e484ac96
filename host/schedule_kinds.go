// schedule_kinds.go turns a step count into the sampling sigmas (descending,
// with a zero appended) for each named schedule: k-diffusion's normal
// (get_sigmas), karras and exponential, and ComfyUI's simple and
// ddim_uniform. It does not sample.
package host

import (
	"fmt"
	"math"
	"strings"
)

// ScheduleNames lists the schedules SamplingSigmas accepts.
var ScheduleNames = []string{"normal", "karras", "exponential", "simple", "ddim_uniform"}

// SamplingSigmas returns steps+1 sigmas for the named schedule over the model's
// discrete schedule; the last one is 0.
//
//   - normal: k-diffusion get_sigmas(steps): t = linspace(999, 0, steps),
//     sigma = t_to_sigma(t) (log-sigma interpolation).
//   - karras: Karras et al. (rho = 7) between the model's sigma_min and sigma_max.
//   - exponential: sigmas evenly spaced in log between sigma_max and sigma_min.
//   - simple: ComfyUI's simple_scheduler: every (1000/steps)-th training sigma
//     from the top.
//   - ddim_uniform: ComfyUI's ddim_scheduler: training sigmas at timesteps
//     1, 1+k, 1+2k, ... (k = 1000/steps, integer), reversed.
func (s *DiscreteSchedule) SamplingSigmas(name string, steps int) ([]float64, error) {
	if steps < 1 {
		return nil, fmt.Errorf("schedule: steps must be at least 1, got %d", steps)
	}
	var sig []float64
	switch name {
	case "normal":
		sig = make([]float64, 0, steps+1)
		for _, t := range linspace(float64(len(s.Sigmas)-1), 0, steps) {
			sig = append(sig, s.TToSigma(t))
		}
	case "karras":
		sig = KarrasSigmas(steps, s.SigmaMin(), s.SigmaMax(), 7)
		return sig, nil
	case "exponential":
		sig = ExponentialSigmas(steps, s.SigmaMin(), s.SigmaMax())
		return sig, nil
	case "simple":
		n := len(s.Sigmas)
		ss := float64(n) / float64(steps)
		for x := range steps {
			sig = append(sig, s.Sigmas[n-1-int(float64(x)*ss)])
		}
	case "ddim_uniform":
		n := len(s.Sigmas)
		ss := max(n/steps, 1)
		asc := []float64{0}
		for x := 1; x < n; x += ss {
			asc = append(asc, s.Sigmas[x])
		}
		for i := len(asc) - 1; i >= 0; i-- {
			sig = append(sig, asc[i])
		}
		return sig, nil
	default:
		return nil, fmt.Errorf("schedule: unknown schedule %q (valid: %s)", name, strings.Join(ScheduleNames, ", "))
	}
	return append(sig, 0), nil
}

// KarrasSigmas is k-diffusion get_sigmas_karras: n sigmas from sigmaMax down
// to sigmaMin spaced evenly in sigma^(1/rho), then a zero.
func KarrasSigmas(n int, sigmaMin, sigmaMax, rho float64) []float64 {
	minInv, maxInv := math.Pow(sigmaMin, 1/rho), math.Pow(sigmaMax, 1/rho)
	out := make([]float64, 0, n+1)
	for _, r := range linspace(0, 1, n) {
		out = append(out, math.Pow(maxInv+r*(minInv-maxInv), rho))
	}
	return append(out, 0)
}

// ExponentialSigmas is k-diffusion get_sigmas_exponential: n sigmas evenly
// spaced in log from sigmaMax to sigmaMin, then a zero.
func ExponentialSigmas(n int, sigmaMin, sigmaMax float64) []float64 {
	out := make([]float64, 0, n+1)
	for _, l := range linspace(math.Log(sigmaMax), math.Log(sigmaMin), n) {
		out = append(out, math.Exp(l))
	}
	return append(out, 0)
}
