// rng_torch.go reproduces PyTorch's CPU random generator so that a seed gives
// the same initial noise as ComfyUI (which draws it with torch.manual_seed(seed)
// and torch.randn on the CPU): a 32-bit Mersenne Twister (mt19937, seeded with
// the low 32 bits of the seed) and torch's normal sampling for float32:
//
//   - numel >= 16 (the contiguous fast path, normal_fill): every element first
//     gets a uniform u = (next32 & 0xFFFFFF) * 2^-24; then each block of 16 is
//     turned into normals by Box-Muller on pairs (j, j+8): radius from 1-u[j],
//     angle 2*pi*u[j+8], cos into j, sin into j+8. When numel is not a multiple
//     of 16, the last 16 elements are drawn again and transformed as a block.
//   - numel < 16 (the scalar path): each element is a float64 normal from
//     normal_distribution<double> (53-bit uniforms, Box-Muller with the second
//     value cached in the generator), rounded to float32.
//
// The transform uses the float32 log/sincos of torch's AVX2 kernel
// (rng_avxmath.go), the path torch takes on x86 CPUs with AVX2; builds
// without it (other CPUs) use libm's logf/cosf/sinf and may differ in the last
// bits. It does not
// reproduce CUDA generators (see rng_philox.go for A1111's) or torch's other
// distributions.
package host

import (
	"math"
)

// mt19937 is the 32-bit Mersenne Twister as at::mt19937 implements it.
type mt19937 struct {
	state [624]uint32
	left  int
	next  int
}

func newMT19937(seed uint64) *mt19937 {
	m := &mt19937{left: 1}
	m.state[0] = uint32(seed)
	for j := 1; j < 624; j++ {
		prev := m.state[j-1]
		m.state[j] = 1812433253*(prev^(prev>>30)) + uint32(j)
	}
	return m
}

func (m *mt19937) twist() {
	const upper, lower, matrixA = 0x80000000, 0x7fffffff, 0x9908b0df
	for j := range 624 {
		y := (m.state[j] & upper) | (m.state[(j+1)%624] & lower)
		v := m.state[(j+397)%624] ^ (y >> 1)
		if y&1 != 0 {
			v ^= matrixA
		}
		m.state[j] = v
	}
	m.left, m.next = 624, 0
}

// uint32 returns the next tempered output.
func (m *mt19937) uint32() uint32 {
	m.left--
	if m.left == 0 {
		m.twist()
	}
	y := m.state[m.next]
	m.next++
	y ^= y >> 11
	y ^= (y << 7) & 0x9d2c5680
	y ^= (y << 15) & 0xefc60000
	y ^= y >> 18
	return y
}

// TorchGenerator is torch's CPU generator (torch.manual_seed / torch.Generator).
type TorchGenerator struct {
	mt         *mt19937
	nextNormal float64 // cached second Box-Muller value of the double path
	hasNormal  bool
}

// NewTorchGenerator is torch.manual_seed(seed) on the CPU generator.
func NewTorchGenerator(seed uint64) *TorchGenerator {
	return &TorchGenerator{mt: newMT19937(seed)}
}

// random64 is CPUGeneratorImpl::random64: two outputs, the first as the high word.
func (g *TorchGenerator) random64() uint64 {
	hi := uint64(g.mt.uint32())
	lo := uint64(g.mt.uint32())
	return hi<<32 | lo
}

// uniformFloat32 is uniform_real_distribution<float>(0, 1).
func (g *TorchGenerator) uniformFloat32() float32 {
	return float32(g.mt.uint32()&(1<<24-1)) * (1.0 / (1 << 24))
}

// normalFloat64 is normal_distribution<double>(0, 1).
func (g *TorchGenerator) normalFloat64() float64 {
	if g.hasNormal {
		g.hasNormal = false
		return g.nextNormal
	}
	u1 := float64(g.random64()&(1<<53-1)) * (1.0 / (1 << 53))
	u2 := float64(g.random64()&(1<<53-1)) * (1.0 / (1 << 53))
	r := math.Sqrt(-2 * math.Log1p(-u2))
	theta := 2 * math.Pi * u1
	g.nextNormal, g.hasNormal = r*math.Sin(theta), true
	return r * math.Cos(theta)
}

// Randn fills out with standard normals exactly as torch.randn(..., dtype=float32)
// fills a contiguous CPU tensor of len(out) elements.
func (g *TorchGenerator) Randn(out []float32) {
	n := len(out)
	if n < 16 {
		for i := range out {
			out[i] = float32(g.normalFloat64())
		}
		return
	}
	for i := range out {
		out[i] = g.uniformFloat32()
	}
	for i := 0; i+16 <= n; i += 16 {
		normalFill16(out[i : i+16])
	}
	if n%16 != 0 {
		tail := out[n-16:]
		for i := range tail {
			tail[i] = g.uniformFloat32()
		}
		normalFill16(tail)
	}
}

// normalFill16 is torch's normal_fill_16_AVX2 in float32 (mean 0, std 1):
// radius = sqrt(-2*log(1-u[j])), theta = float32(2*pi) * u[j+8].
func normalFill16(d []float32) {
	const twoPi = float32(2 * math.Pi)
	for j := range 8 {
		u1 := 1 - d[j] // (0, 1] for the log
		u2 := d[j+8]
		radius := float32(math.Sqrt(float64(-2 * avxLogf(u1))))
		sin, cos := avxSincosf(f32mul(twoPi, u2))
		d[j] = f32mul(radius, cos)
		d[j+8] = f32mul(radius, sin)
	}
}
