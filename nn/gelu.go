// gelu.go: the exact (erf) GELU on slices, portable version, used by GELU
// and GEGLU; gelu_amd64.go routes long slices to AVX-512. It does not
// implement the tanh approximation (GELUTanh in elementwise.go).
package nn

import "math"

// geluExact is 0.5*x*(1+erf(x/sqrt2)) with erf in float64.
func geluExact(x float32) float32 {
	return 0.5 * x * (1 + float32(math.Erf(float64(x)*(1/math.Sqrt2))))
}

func vecGELUGo(dst, src []float32) {
	dst = dst[:len(src)]
	for i, v := range src {
		dst[i] = geluExact(v)
	}
}

func vecGEGLUGo(dst, h, g []float32) {
	dst, h = dst[:len(g)], h[:len(g)]
	for i, v := range g {
		dst[i] = h[i] * geluExact(v)
	}
}
