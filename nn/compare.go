// compare.go: the error measure every check of this project uses, the
// relative L2 distance, computed in float64. It does not decide
// tolerances.
package nn

import "math"

// RelL2 returns ||got - want||_2 / ||want||_2 over len(want) elements
// (||got - want||_2 when want is all zeros). A NaN or Inf in either gives
// NaN or Inf, which fails any tolerance check written as !(e <= tol).
// got must hold at least len(want) values.
func RelL2(got, want []float32) float64 {
	var num, den float64
	for i, w := range want {
		d := float64(got[i]) - float64(w)
		num += d * d
		den += float64(w) * float64(w)
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}
