// vec.go: the portable bodies of the vector helpers (row max, exp(x-m)
// with sum, scale, affine, SiLU of an affine) that softmax, attention,
// GroupNorm and SiLU call; vec_amd64.go routes long slices to AVX-512
// assembly. They do not split work across cores (callers do).
package nn

func vecMaxGo(x []float32) float32 {
	m := x[0]
	for _, v := range x[1:] {
		if v > m {
			m = v
		}
	}
	return m
}

func vecExpSubSumGo(x []float32, m float32) float32 {
	var s0, s1 float32
	i := 0
	for ; i+2 <= len(x); i += 2 {
		r := x[i : i+2 : i+2]
		e0, e1 := expf(r[0]-m), expf(r[1]-m)
		r[0], r[1] = e0, e1
		s0 += e0
		s1 += e1
	}
	for ; i < len(x); i++ {
		e := expf(x[i] - m)
		x[i] = e
		s0 += e
	}
	return s0 + s1
}

func vecScaleGo(x []float32, s float32) {
	for i := range x {
		x[i] *= s
	}
}

func vecAffineGo(dst, src []float32, sc, sh float32) {
	dst = dst[:len(src)]
	for i, v := range src {
		dst[i] = v*sc + sh
	}
}

func vecSiLUAffineGo(dst, src []float32, sc, sh float32) {
	dst = dst[:len(src)]
	for i, v := range src {
		y := v*sc + sh
		dst[i] = y / (1 + expf(-y))
	}
}
