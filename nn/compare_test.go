package nn

import (
	"math"
	"testing"
)

func TestRelL2(t *testing.T) {
	nan := float32(math.NaN())
	for _, tc := range []struct {
		name      string
		got, want []float32
		rel       float64 // NaN: want NaN
	}{
		{"equal", []float32{1, -2, 3}, []float32{1, -2, 3}, 0},
		{"3-4-5", []float32{3, 4}, []float32{0, 8}, 5.0 / 8},
		{"zero want gives the absolute norm", []float32{3, 4}, []float32{0, 0}, 5},
		{"extra got values are ignored", []float32{1, 1, 99}, []float32{1, 1}, 0},
		{"NaN propagates", []float32{nan, 1}, []float32{1, 1}, math.NaN()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := RelL2(tc.got, tc.want)
			if math.IsNaN(tc.rel) {
				if !math.IsNaN(got) {
					t.Fatalf("RelL2 = %v, want NaN", got)
				}
				return
			}
			if math.Abs(got-tc.rel) > 1e-12 {
				t.Fatalf("RelL2 = %v, want %v", got, tc.rel)
			}
		})
	}
}
