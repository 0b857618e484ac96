// noise.go provides the NoiseSource implementations and the seeded initial
// noise: ComfyUI's convention (torch CPU generator; one randn over the whole
// batch; ancestral noise from a second generator seeded with seed+1, as
// ComfyUI's default_noise_sampler does for a CPU latent; the SDE samplers'
// Brownian tree seeded with the seed itself, as BrownianTreeNoiseSampler) and
// A1111's "NV" convention (one Philox generator per image, seeded seed+i,
// whose later draws are the ancestral noise; per-step draws for the SDE
// samplers too). It does not implement A1111's subseeds or its Brownian
// mode (one tree per image on the CUDA generator).
package host

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sdbridge/sdbridge/nn"
)

// NoiseKinds lists the seed conventions NewSeedNoise accepts.
var NoiseKinds = []string{"comfy", "a1111"}

// SeedNoise gives the initial noise for a seed and a NoiseSource for the
// steps that draw noise.
type SeedNoise interface {
	Initial(shape []int) (*nn.Tensor, error) // [B, C, H, W]
	Steps() NoiseSource
}

// NewSeedNoise returns the seed convention of that kind ("comfy" or "a1111").
func NewSeedNoise(kind string, seed uint64) (SeedNoise, error) {
	switch kind {
	case "comfy", "":
		return &comfyNoise{seed: seed}, nil
	case "a1111":
		return &a1111Noise{seed: seed}, nil
	}
	return nil, fmt.Errorf("unknown noise kind %q (valid: %s)", kind, strings.Join(NoiseKinds, ", "))
}

// comfyNoise: torch.manual_seed(seed); torch.randn([B, C, H, W]).
type comfyNoise struct{ seed uint64 }

func (c *comfyNoise) Initial(shape []int) (*nn.Tensor, error) {
	t := nn.New(shape...)
	NewTorchGenerator(c.seed).Randn(t.Data)
	return t, nil
}

// Steps gives ComfyUI's step noise for a CPU latent: default_noise_sampler
// seeds its generator with seed+1 ("if x.device == cpu: seed += 1"), and
// dpmpp_2m_sde's BrownianTreeNoiseSampler uses the seed itself.
func (c *comfyNoise) Steps() NoiseSource {
	return &BrownianSeedNoise{Seed: c.seed, Steps: &TorchNoise{Gen: NewTorchGenerator(c.seed + 1)}}
}

// TorchNoise draws each request as one torch.randn on its generator.
type TorchNoise struct{ Gen *TorchGenerator }

// Next implements NoiseSource.
func (n *TorchNoise) Next(shape []int) (*nn.Tensor, error) {
	t := nn.New(shape...)
	n.Gen.Randn(t.Data)
	return t, nil
}

// a1111Noise: generator i (seed+i) gives image i's initial noise, then its
// step noise.
type a1111Noise struct {
	seed uint64
	gens []*PhiloxGenerator
}

func (a *a1111Noise) Initial(shape []int) (*nn.Tensor, error) {
	if len(shape) < 1 || shape[0] < 1 {
		return nil, fmt.Errorf("noise: shape %v has no batch dimension", shape)
	}
	a.gens = make([]*PhiloxGenerator, shape[0])
	for i := range a.gens {
		a.gens[i] = NewPhiloxGenerator(a.seed + uint64(i))
	}
	return (&PhiloxNoise{Gens: a.gens}).Next(shape)
}

func (a *a1111Noise) Steps() NoiseSource { return &PhiloxNoise{Gens: a.gens} }

// PhiloxNoise draws image i of each request from generator i.
type PhiloxNoise struct{ Gens []*PhiloxGenerator }

// Next implements NoiseSource.
func (n *PhiloxNoise) Next(shape []int) (*nn.Tensor, error) {
	if len(shape) < 1 || shape[0] != len(n.Gens) {
		return nil, fmt.Errorf("noise: shape %v, want a batch of %d", shape, len(n.Gens))
	}
	t := nn.New(shape...)
	per := len(t.Data) / shape[0]
	for i, g := range n.Gens {
		g.Randn(t.Data[i*per : (i+1)*per])
	}
	return t, nil
}

// ListNoise returns recorded tensors in order (the golden cases' step noise).
type ListNoise struct {
	List []*nn.Tensor
	next int
}

// Next implements NoiseSource.
func (n *ListNoise) Next(shape []int) (*nn.Tensor, error) {
	if n.next >= len(n.List) {
		return nil, fmt.Errorf("noise: all %d recorded draws used", len(n.List))
	}
	t := n.List[n.next]
	if !slices.Equal(t.Shape, shape) {
		return nil, fmt.Errorf("noise: recorded draw %d has shape %v, want %v", n.next, t.Shape, shape)
	}
	n.next++
	return t, nil
}
