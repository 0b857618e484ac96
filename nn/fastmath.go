// fastmath.go: a float32 exp accurate to about 2 ulp, several times faster
// than float64 math.Exp, for softmax and the sigmoid-type activations. It
// does not handle NaN specially beyond propagating it, and flushes results
// below the smallest normal float32 to zero.
package nn

import "math"

const (
	expHi    = 88.72283
	expLo    = -87.33654
	log2e    = 1.44269504088896341
	ln2Hi    = 0.693359375
	ln2Lo    = -2.12194440e-4
	expC1    = 1.9875691500e-4
	expC2    = 1.3981999507e-3
	expC3    = 8.3334519073e-3
	expC4    = 4.1665795894e-2
	expC5    = 1.6666665459e-1
	expC6    = 5.0000001201e-1
	expRound = 0.5
)

// expf returns e**x in float32 (Cephes-style range reduction plus a
// degree-6 polynomial).
func expf(x float32) float32 {
	if x > expHi {
		return float32(math.Inf(1))
	}
	if x < expLo {
		if x != x {
			return x
		}
		return 0
	}
	// n = round(x / ln2)
	fx := x*log2e + expRound
	n := int32(fx)
	if fx < 0 && float32(n) != fx {
		n-- // floor for negatives
	}
	nf := float32(n)
	r := x - nf*ln2Hi - nf*ln2Lo
	r2 := r * r
	p := expC1*r + expC2
	p = p*r + expC3
	p = p*r + expC4
	p = p*r + expC5
	p = p*r + expC6
	p = p*r2 + r + 1
	// scale by 2^n; n is in [-126, 128], so split 2^128 to stay finite.
	if n > 127 {
		return p * 2 * math.Float32frombits(uint32(n-1+127)<<23)
	}
	if n < -126 {
		return p * math.Float32frombits(uint32(n+126+127)<<23) * 1.1754943508222875e-38
	}
	return p * math.Float32frombits(uint32(n+127)<<23)
}
