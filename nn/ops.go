// ops.go: the kernel API every model is written against. These first
// versions are plain, correct reference loops; fast kernels replace the
// bodies without changing the signatures (the references stay in tests).
package nn

import (
	"math"
)

// Gemm computes C = alpha*op(A)*op(B) + beta*C for row-major matrices.
// op(A) is [m, k], op(B) is [k, n], C is [m, n]; lda/ldb/ldc are row strides.
func Gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float32
			for p := 0; p < k; p++ {
				var av, bv float32
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				s += av * bv
			}
			if beta == 0 {
				c[i*ldc+j] = alpha * s
			} else {
				c[i*ldc+j] = alpha*s + beta*c[i*ldc+j]
			}
		}
	}
}

// Add returns a + b (same shape).
func Add(a, b *Tensor) *Tensor {
	out := New(a.Shape...)
	for i := range out.Data {
		out.Data[i] = a.Data[i] + b.Data[i]
	}
	return out
}

// AddInPlace does a += b (same shape).
func AddInPlace(a, b *Tensor) {
	for i := range a.Data {
		a.Data[i] += b.Data[i]
	}
}

// Scale multiplies every element of t by s in place.
func Scale(t *Tensor, s float32) {
	for i := range t.Data {
		t.Data[i] *= s
	}
}

// SiLU applies x*sigmoid(x) in place.
func SiLU(t *Tensor) {
	for i, x := range t.Data {
		t.Data[i] = x / (1 + float32(math.Exp(float64(-x))))
	}
}

// GELU applies the exact (erf) GELU in place.
func GELU(t *Tensor) {
	for i, x := range t.Data {
		t.Data[i] = 0.5 * x * (1 + float32(math.Erf(float64(x)/math.Sqrt2)))
	}
}

// GELUTanh applies the tanh approximation of GELU in place.
func GELUTanh(t *Tensor) {
	const c = 0.7978845608028654 // sqrt(2/pi)
	for i, x := range t.Data {
		x64 := float64(x)
		t.Data[i] = float32(0.5 * x64 * (1 + math.Tanh(c*(x64+0.044715*x64*x64*x64))))
	}
}

// QuickGELU applies x*sigmoid(1.702x) in place (CLIP).
func QuickGELU(t *Tensor) {
	for i, x := range t.Data {
		t.Data[i] = x / (1 + float32(math.Exp(float64(-1.702*x))))
	}
}

// Softmax normalises each row of length n in place.
func Softmax(x []float32, n int) {
	for r := 0; r+n <= len(x); r += n {
		row := x[r : r+n]
		m := float32(math.Inf(-1))
		for _, v := range row {
			m = max(m, v)
		}
		var s float64
		for i, v := range row {
			e := float32(math.Exp(float64(v - m)))
			row[i] = e
			s += float64(e)
		}
		inv := float32(1 / s)
		for i := range row {
			row[i] *= inv
		}
	}
}

// UpsampleNearest2x doubles H and W of x [B, C, H, W].
func UpsampleNearest2x(x *Tensor) *Tensor {
	b, c, h, w := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	out := New(b, c, 2*h, 2*w) // [B, C, 2H, 2W]
	for p := 0; p < b*c; p++ {
		src := x.Data[p*h*w : (p+1)*h*w]
		dst := out.Data[p*4*h*w : (p+1)*4*h*w]
		for y := 0; y < 2*h; y++ {
			for xx := 0; xx < 2*w; xx++ {
				dst[y*2*w+xx] = src[(y/2)*w+xx/2]
			}
		}
	}
	return out
}

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
