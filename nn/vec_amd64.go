// vec_amd64.go: routes the vector helpers to the AVX-512 loops in
// vec_amd64.s when the CPU has AVX-512F and the slice has at least 16
// elements; the last len%16 elements go through the portable code. It
// does not use AVX2 (the portable code covers those CPUs).
package nn

import "golang.org/x/sys/cpu"

var useAVX512 = cpu.X86.HasAVX512F

//go:noescape
func vecMaxAVX512(x *float32, n int) float32

//go:noescape
func vecExpSubSumAVX512(x *float32, n int, m float32) float32

//go:noescape
func vecScaleAVX512(x *float32, n int, s float32)

//go:noescape
func vecAffineAVX512(dst, src *float32, n int, sc, sh float32)

//go:noescape
func vecSiLUAffineAVX512(dst, src *float32, n int, sc, sh float32)

func vecMax(x []float32) float32 {
	n := len(x) &^ 15
	if !useAVX512 || n == 0 {
		return vecMaxGo(x)
	}
	m := vecMaxAVX512(&x[0], n)
	if n < len(x) {
		m = max(m, vecMaxGo(x[n:]))
	}
	return m
}

func vecExpSubSum(x []float32, m float32) float32 {
	n := len(x) &^ 15
	if !useAVX512 || n == 0 {
		return vecExpSubSumGo(x, m)
	}
	s := vecExpSubSumAVX512(&x[0], n, m)
	if n < len(x) {
		s += vecExpSubSumGo(x[n:], m)
	}
	return s
}

func vecScale(x []float32, s float32) {
	n := len(x) &^ 15
	if !useAVX512 || n == 0 {
		vecScaleGo(x, s)
		return
	}
	vecScaleAVX512(&x[0], n, s)
	vecScaleGo(x[n:], s)
}

func vecAffine(dst, src []float32, sc, sh float32) {
	n := len(src) &^ 15
	dst = dst[:len(src)]
	if !useAVX512 || n == 0 {
		vecAffineGo(dst, src, sc, sh)
		return
	}
	vecAffineAVX512(&dst[0], &src[0], n, sc, sh)
	vecAffineGo(dst[n:], src[n:], sc, sh)
}

func vecSiLUAffine(dst, src []float32, sc, sh float32) {
	n := len(src) &^ 15
	dst = dst[:len(src)]
	if !useAVX512 || n == 0 {
		vecSiLUAffineGo(dst, src, sc, sh)
		return
	}
	vecSiLUAffineAVX512(&dst[0], &src[0], n, sc, sh)
	vecSiLUAffineGo(dst[n:], src[n:], sc, sh)
}
