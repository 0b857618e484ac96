// embed.go: sinusoidal timestep embeddings. Small (one row per timestep), so
// it stays a plain loop; it does not include the MLP that follows it.
package nn

import "math"

// TimestepEmbedding returns sinusoidal embeddings [len(t), dim]. The
// arguments are computed in float32 (float32(t)*float32(freq)) as the
// reference code does. flipSinToCos puts cos first (ldm U-Net: true; it is
// also diffusers' flip_sin_to_cos). freq_i = exp(-ln(maxPeriod)*i/(half-shift)).
func TimestepEmbedding(t []float32, dim int, flipSinToCos bool, downscaleFreqShift float64, maxPeriod float64) *Tensor {
	half := dim / 2
	out := New(len(t), dim) // [N, dim]
	freqs := make([]float32, half)
	for i := range freqs {
		freqs[i] = float32(math.Exp(-math.Log(maxPeriod) * float64(i) / (float64(half) - downscaleFreqShift)))
	}
	for n, tv := range t {
		row := out.Data[n*dim : (n+1)*dim]
		for i, f := range freqs {
			arg := tv * f
			c, s := float32(math.Cos(float64(arg))), float32(math.Sin(float64(arg)))
			if flipSinToCos {
				row[i], row[half+i] = c, s
			} else {
				row[i], row[half+i] = s, c
			}
		}
	}
	return out
}
