// Package host is the host process: the generation pipeline (prompt ->
// conditioning -> sampler loop with CFG -> VAE -> image), the samplers and
// sigma schedules, the seeded noise generators, the PNG writer, and (in other
// files) the plugin supervisor and tensor arenas.
//
// schedule.go holds the model's discrete noise schedule (1000
// alphas_cumprod, the checkpoint's or SD1.5's from models.SD15AlphasCumprod,
// and the sigmas they imply) and the conversions between sigma and the
// continuous U-Net timestep, with the k-diffusion semantics of
// CompVisDenoiser with quantize=False. It does not choose the sampling
// sigmas (schedule_kinds.go does) and runs no model.
package host

import (
	"fmt"
	"math"
)

// DiscreteSchedule is the model's training noise schedule: Sigmas[i] is the
// noise level of training timestep i (ascending), kept in float64 from the
// float32 alphas_cumprod, as k-diffusion's DiscreteSchedule holds them.
type DiscreteSchedule struct {
	AlphasCumprod []float32 // [1000] as stored (float32)
	Sigmas        []float64 // [1000] sqrt((1-a)/a), ascending
	LogSigmas     []float64 // [1000] log(Sigmas)
}

// NewDiscreteSchedule builds the schedule from alphas_cumprod (the
// checkpoint's `alphas_cumprod` tensor when present, else models.SD15AlphasCumprod).
func NewDiscreteSchedule(alphasCumprod []float32) (*DiscreteSchedule, error) {
	if len(alphasCumprod) < 2 {
		return nil, fmt.Errorf("schedule: alphas_cumprod has %d values, need at least 2", len(alphasCumprod))
	}
	s := &DiscreteSchedule{
		AlphasCumprod: alphasCumprod,
		Sigmas:        make([]float64, len(alphasCumprod)),
		LogSigmas:     make([]float64, len(alphasCumprod)),
	}
	for i, a32 := range alphasCumprod {
		a := float64(a32)
		if !(a > 0 && a < 1) {
			return nil, fmt.Errorf("schedule: alphas_cumprod[%d] = %v is not in (0, 1)", i, a32)
		}
		s.Sigmas[i] = math.Sqrt((1 - a) / a)
		s.LogSigmas[i] = math.Log(s.Sigmas[i])
		if i > 0 && s.Sigmas[i] <= s.Sigmas[i-1] {
			return nil, fmt.Errorf("schedule: alphas_cumprod is not strictly decreasing at %d", i)
		}
	}
	return s, nil
}

// SigmaMin is the smallest training sigma (timestep 0).
func (s *DiscreteSchedule) SigmaMin() float64 { return s.Sigmas[0] }

// SigmaMax is the largest training sigma (the last timestep).
func (s *DiscreteSchedule) SigmaMax() float64 { return s.Sigmas[len(s.Sigmas)-1] }

// SigmaToT maps sigma to the continuous timestep by linear interpolation of
// log-sigma between the two neighbouring training timesteps (k-diffusion
// sigma_to_t, quantize=False), clamped to [0, len-1].
func (s *DiscreteSchedule) SigmaToT(sigma float64) float64 {
	ls := math.Log(sigma)
	n := len(s.LogSigmas)
	// low = the last index whose log-sigma is <= ls (k-diffusion:
	// dists.ge(0).cumsum().argmax()), at most n-2; 0 when none is.
	low := 0
	for i := n - 1; i >= 0; i-- {
		if ls-s.LogSigmas[i] >= 0 {
			low = i
			break
		}
	}
	low = min(low, n-2)
	lo, hi := s.LogSigmas[low], s.LogSigmas[low+1]
	w := (lo - ls) / (lo - hi)
	w = max(0, min(1, w))
	return (1-w)*float64(low) + w*float64(low+1)
}

// TToSigma maps a (fractional) timestep to sigma by interpolating log-sigma
// (k-diffusion t_to_sigma).
func (s *DiscreteSchedule) TToSigma(t float64) float64 {
	lowIdx, highIdx := math.Floor(t), math.Ceil(t)
	w := t - lowIdx
	ls := (1-w)*s.LogSigmas[int(lowIdx)] + w*s.LogSigmas[int(highIdx)]
	return math.Exp(ls)
}

// linspace is torch.linspace in float64 (the first half counts up from
// start, the second half down from end, as torch computes it).
func linspace(start, end float64, n int) []float64 {
	out := make([]float64, n)
	if n == 1 {
		out[0] = start
		return out
	}
	step := (end - start) / float64(n-1)
	half := n / 2
	for i := range n {
		if i < half {
			out[i] = start + step*float64(i)
		} else {
			out[i] = end - step*float64(n-1-i)
		}
	}
	return out
}
