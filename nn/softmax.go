// softmax.go: row softmax (max-subtracted, fast float32 exp, AVX-512 where
// available), parallel over rows. It does not mask; callers add -inf-like biases before calling.
package nn

import "math"

// Softmax normalises each row of length n in place.
func Softmax(x []float32, n int) {
	if n <= 0 {
		return
	}
	rows := len(x) / n
	parallelFor(rows, n*actCost, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			softmaxRow(x[r*n : (r+1)*n])
		}
	})
}

// softmaxRow normalises one row in place.
func softmaxRow(row []float32) {
	m := vecMax(row)
	if math.IsInf(float64(m), -1) {
		// Every entry is -inf: torch gives NaN; keep that behaviour visible.
		for i := range row {
			row[i] = float32(math.NaN())
		}
		return
	}
	inv := 1 / vecExpSubSum(row, m)
	vecScale(row, inv)
}

// softmaxRowUnnormalised replaces row by exp(row - max(row)) and returns
// 1/sum of the result (NaN for a row that is all -inf, as torch gives).
func softmaxRowUnnormalised(row []float32) float32 {
	m := vecMax(row)
	if math.IsInf(float64(m), -1) {
		return float32(math.NaN())
	}
	return 1 / vecExpSubSum(row, m)
}
