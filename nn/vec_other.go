//go:build !amd64

// vec_other.go: the vector helpers on architectures without assembly: the
// portable loops of vec.go, nothing else.
package nn

func vecMax(x []float32) float32                       { return vecMaxGo(x) }
func vecExpSubSum(x []float32, m float32) float32      { return vecExpSubSumGo(x, m) }
func vecScale(x []float32, s float32)                  { vecScaleGo(x, s) }
func vecAffine(dst, src []float32, sc, sh float32)     { vecAffineGo(dst, src, sc, sh) }
func vecSiLUAffine(dst, src []float32, sc, sh float32) { vecSiLUAffineGo(dst, src, sc, sh) }
