// rng_philox.go reproduces the noise of AUTOMATIC1111's webui with its "NV"
// random source (modules/rng_philox.py), which imitates torch.randn on NVIDIA
// GPUs so that seeds give the same images on any hardware: Philox 4x32 with
// 10 rounds, key = the 64-bit seed, counter = (offset, 0, element index, 0),
// then Box-Muller on the first two output words, the sine half only. Each call
// to Randn advances the offset by one. The arithmetic follows the numpy code:
// the uniforms are float64 built from float32 constants, the result is
// rounded to float32. It does not reproduce torch's CUDA generator for other
// distributions.
package host

import (
	"math"
)

const (
	philoxM0, philoxM1 = 0xD2511F53, 0xCD9E8D57
	philoxW0, philoxW1 = 0x9E3779B9, 0xBB67AE85
)

// PhiloxGenerator is webui's rng_philox.Generator.
type PhiloxGenerator struct {
	Seed   uint64
	Offset uint32
}

// NewPhiloxGenerator returns a generator at offset 0.
func NewPhiloxGenerator(seed uint64) *PhiloxGenerator { return &PhiloxGenerator{Seed: seed} }

// philox4x32 runs the 10 rounds on one counter.
func philox4x32(c [4]uint32, k0, k1 uint32) [4]uint32 {
	for r := range 10 {
		v1 := uint64(c[0]) * philoxM0
		v2 := uint64(c[2]) * philoxM1
		c = [4]uint32{
			uint32(v2>>32) ^ c[1] ^ k0,
			uint32(v2),
			uint32(v1>>32) ^ c[3] ^ k1,
			uint32(v1),
		}
		if r < 9 {
			k0 += philoxW0
			k1 += philoxW1
		}
	}
	return c
}

// Randn fills out with len(out) standard normals (one generator call).
func (g *PhiloxGenerator) Randn(out []float32) {
	// two_pow32_inv and two_pow32_inv_2pi are float32 arrays in webui; the
	// products with the uint32 words promote to float64.
	inv := float64(float32(2.3283064e-10))
	inv2pi := float64(float32(2.3283064e-10 * 6.2831855))
	halfInv := float64(float32(inv) / 2)
	halfInv2pi := float64(float32(inv2pi) / 2)
	k0, k1 := uint32(g.Seed), uint32(g.Seed>>32)
	for i := range out {
		c := philox4x32([4]uint32{g.Offset, 0, uint32(i), 0}, k0, k1)
		u := float64(c[0])*inv + halfInv
		v := float64(c[1])*inv2pi + halfInv2pi
		s := math.Sqrt(-2 * math.Log(u))
		out[i] = float32(s * math.Sin(v))
	}
	g.Offset++
}
