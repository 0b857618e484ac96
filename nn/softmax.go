// softmax.go: row softmax (max-subtracted, fast float32 exp), parallel over
// rows. It does not mask; callers add -inf-like biases before calling.
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
	m := float32(math.Inf(-1))
	for _, v := range row {
		if v > m {
			m = v
		}
	}
	if math.IsInf(float64(m), -1) {
		// Every entry is -inf: torch gives NaN; keep that behaviour visible.
		for i := range row {
			row[i] = float32(math.NaN())
		}
		return
	}
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(row); i += 4 {
		r := row[i : i+4 : i+4]
		e0, e1, e2, e3 := expf(r[0]-m), expf(r[1]-m), expf(r[2]-m), expf(r[3]-m)
		r[0], r[1], r[2], r[3] = e0, e1, e2, e3
		s0 += e0
		s1 += e1
		s2 += e2
		s3 += e3
	}
	for ; i < len(row); i++ {
		e := expf(row[i] - m)
		row[i] = e
		s0 += e
	}
	inv := 1 / ((s0 + s1) + (s2 + s3))
	for i := range row {
		row[i] *= inv
	}
}
