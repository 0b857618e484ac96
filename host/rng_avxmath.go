// rng_avxmath.go is the float32 log and sincos that torch's AVX2 normal_fill
// uses (ATen's avx_mathfun.h: Cephes polynomials by way of Julien Pommier's
// sse_mathfun), evaluated one lane at a time so that seeded noise matches
// torch bit for bit on x86 CPUs. torch's AVX2 kernels are compiled with FMA
// enabled, and the compiler contracts some multiply-adds; fma32 marks exactly
// those, f32mul marks products rounded on their own (explicit float32
// conversions stop Go from fusing anything else). With this, all 327,680
// values of torch.randn(16384) for seeds 0-19 printed by PyTorch 1.13
// (Debian) agree bit for bit. It does not handle arguments torch's sampler
// never produces (zero, negative or non-finite for log; non-finite for sincos).
package host

import "math"

// avxLogf is log256_ps for one positive, finite float32.
func avxLogf(x float32) float32 {
	const (
		sqrthf = 0.707106781186547524
		p0     = 7.0376836292e-2
		p1     = -1.1514610310e-1
		p2     = 1.1676998740e-1
		p3     = -1.2420140846e-1
		p4     = +1.4249322787e-1
		p5     = -1.6668057665e-1
		p6     = +2.0000714765e-1
		p7     = -2.4999993993e-1
		p8     = +3.3333331174e-1
		q1     = -2.12194440e-4
		q2     = 0.693359375
	)
	bits := math.Float32bits(max(x, math.Float32frombits(0x00800000)))
	e := float32(int32(bits>>23)-0x7f) + 1
	m := math.Float32frombits(bits&^0x7f800000 | math.Float32bits(0.5)) // [0.5, 1)
	var tmp float32
	if m < sqrthf {
		tmp = m
		e -= 1
	}
	m = m - 1
	m = m + tmp
	z := f32mul(m, m)
	y := float32(p0)
	for _, p := range []float32{p1, p2, p3, p4, p5, p6, p7, p8} {
		y = fma32(y, m, p)
	}
	y = f32mul(y, m)
	y = fma32(y, z, f32mul(e, q1))
	y = y - f32mul(z, 0.5)
	m = m + y
	return fma32(e, q2, m)
}

// avxSincosf is sincos256_ps for one finite float32.
func avxSincosf(x float32) (sin, cos float32) {
	const (
		fopi = 1.27323954473516
		dp1  = -0.78515625
		dp2  = -2.4187564849853515625e-4
		dp3  = -3.77489497744594108e-8
		c0   = 2.443315711809948e-005
		c1   = -1.388731625493765e-003
		c2   = 4.166664568298827e-002
		s0   = -1.9515295891e-4
		s1   = 8.3321608736e-3
		s2   = -1.6666654611e-1
	)
	signSin := math.Float32bits(x) & 0x80000000
	x = float32(math.Abs(float64(x)))
	j := int32(f32mul(x, fopi)) // truncation, as cvttps
	j = (j + 1) &^ 1
	y := float32(j)
	swapSin := uint32(j&4) << 29
	sinPoly := j&2 == 0 // the sine polynomial gives sin in these octants
	x = fma32(y, dp1, x)
	x = fma32(y, dp2, x)
	x = fma32(y, dp3, x)
	signCos := uint32(^(j-2)&4) << 29
	signSin ^= swapSin
	z := f32mul(x, x)
	yc := float32(c0)
	yc = fma32(yc, z, c1)
	yc = fma32(yc, z, c2)
	yc = f32mul(yc, z)
	yc = fma32(yc, z, -f32mul(z, 0.5))
	yc = yc + 1
	ys := float32(s0)
	ys = fma32(ys, z, s1)
	ys = fma32(ys, z, s2)
	ys = f32mul(ys, z)
	ys = fma32(ys, x, x)
	if sinPoly {
		sin, cos = ys, yc
	} else {
		sin, cos = yc, ys
	}
	sin = math.Float32frombits(math.Float32bits(sin) ^ signSin)
	cos = math.Float32frombits(math.Float32bits(cos) ^ signCos)
	return sin, cos
}

// f32mul is a float32 product rounded on its own (never fused).
func f32mul(a, b float32) float32 { return float32(a * b) }

// fma32 is a fused float32 multiply-add: the product is exact in float64, so
// one float64 rounding then one float32 rounding (a double rounding that can
// differ from a true float32 FMA only when the float64 sum lands exactly on a
// float32 half-way point; not seen in the check above).
func fma32(a, b, c float32) float32 { return float32(math.FMA(float64(a), float64(b), float64(c))) }
