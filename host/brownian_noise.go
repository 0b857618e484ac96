// brownian_noise.go turns the Brownian tree (brownian.go) into sampler noise
// the way k-diffusion's BrownianTreeNoiseSampler does, and lets a seeded
// NoiseSource offer it: the SDE samplers (dpmpp_2m_sde) ask the NoiseSource
// for Brownian noise when it implements BrownianNoiseSource and fall back to
// one draw per step otherwise (recorded noise, the A1111 convention).
//
// The sampler covers [min positive sigma, max sigma] (as float32, widened,
// like float(tensor) in Python) with one tree seeded with the generation seed
// over the whole batch shape, as ComfyUI does for a single seed with its
// default cpu=True tree; the noise for a step sigma -> sigma_next is
// -W(sigma_next, sigma) / sqrt(sigma - sigma_next), a standard normal.
// It does not implement per-image seed lists (A1111's batched trees, whose
// trees draw on the CUDA generator) or the sigma transforms of other models.
package host

import (
	"fmt"
	"math"

	"github.com/sdbridge/sdbridge/nn"
)

// IntervalNoise gives the standard normal noise for a step from sigma to
// sigmaNext.
type IntervalNoise interface {
	Between(sigma, sigmaNext float64) (*nn.Tensor, error)
}

// BrownianNoiseSource is a NoiseSource that can also give k-diffusion's
// Brownian-tree noise over [sigmaMin, sigmaMax] for tensors of shape.
type BrownianNoiseSource interface {
	NoiseSource
	BrownianNoise(shape []int, sigmaMin, sigmaMax float64) (IntervalNoise, error)
}

// BrownianSeedNoise is the step noise of a seeded generation: Brownian-tree
// noise from Seed for the samplers that use it, draws from Steps for the
// others.
type BrownianSeedNoise struct {
	Seed  uint64
	Steps NoiseSource // per-step draws (e.g. TorchNoise); may be nil
}

// Next implements NoiseSource by drawing from Steps.
func (n *BrownianSeedNoise) Next(shape []int) (*nn.Tensor, error) {
	if n.Steps == nil {
		return nil, fmt.Errorf("noise: seed %d has no per-step noise source", n.Seed)
	}
	return n.Steps.Next(shape)
}

// BrownianNoise implements BrownianNoiseSource.
func (n *BrownianSeedNoise) BrownianNoise(shape []int, sigmaMin, sigmaMax float64) (IntervalNoise, error) {
	return NewBrownianNoiseSampler(shape, sigmaMin, sigmaMax, n.Seed)
}

// BrownianNoiseSampler is k-diffusion's BrownianTreeNoiseSampler(x,
// sigma_min, sigma_max, seed=seed) for a float32 x on the CPU.
type BrownianNoiseSampler struct {
	shape []int
	tree  *BrownianTree
}

// NewBrownianNoiseSampler builds the tree for tensors of shape over
// [sigmaMin, sigmaMax].
func NewBrownianNoiseSampler(shape []int, sigmaMin, sigmaMax float64, seed uint64) (*BrownianNoiseSampler, error) {
	numel := 1
	for _, d := range shape {
		numel *= d
	}
	lo, hi := float64(float32(sigmaMin)), float64(float32(sigmaMax))
	if lo > hi {
		lo, hi = hi, lo
	}
	tree, err := NewBrownianTree(lo, hi, numel, seed)
	if err != nil {
		return nil, fmt.Errorf("brownian noise for shape %v: %w", shape, err)
	}
	return &BrownianNoiseSampler{shape: append([]int(nil), shape...), tree: tree}, nil
}

// Between implements IntervalNoise: W(sigma, sigmaNext) / sqrt(|sigmaNext -
// sigma|) in float32, with W's sign following the direction of the step.
func (s *BrownianNoiseSampler) Between(sigma, sigmaNext float64) (*nn.Tensor, error) {
	t0, t1 := float32(sigma), float32(sigmaNext)
	if t0 == t1 {
		return nil, fmt.Errorf("brownian noise: empty step at sigma %v", sigma)
	}
	lo, hi, sign := t0, t1, float32(1)
	if t1 < t0 {
		lo, hi, sign = t1, t0, -1
	}
	w, err := s.tree.Increment(float64(lo), float64(hi))
	if err != nil {
		return nil, fmt.Errorf("brownian noise [%v, %v]: %w", sigmaNext, sigma, err)
	}
	d := hi - lo
	den := float32(math.Sqrt(float64(d))) // float32 sqrt (exact through float64)
	out := nn.New(s.shape...)             // [B, C, H, W]
	for i, v := range w {
		out.Data[i] = (v * sign) / den
	}
	return out, nil
}
