// elementwise.go: pointwise kernels (add, multiply, scale, channel biases)
// and the activations (SiLU, GELU erf/tanh, QuickGELU), parallel over all
// cores for large tensors. It does not broadcast beyond the documented
// channel-bias forms; shapes are the caller's contract.
package nn

// elemCost is the per-element work estimate passed to parallelFor for
// memory-bound loops; activations use higher costs.
const (
	elemCost = 1
	actCost  = 16
)

// Add returns a + b (same shape).
func Add(a, b *Tensor) *Tensor {
	mustSameShape("Add", a, b)
	out := New(a.Shape...)
	ad, bd, od := a.Data, b.Data[:len(a.Data)], out.Data
	parallelFor(len(od), elemCost, func(lo, hi int) {
		o, x, y := od[lo:hi], ad[lo:hi], bd[lo:hi]
		for i := range o {
			o[i] = x[i] + y[i]
		}
	})
	return out
}

// AddInPlace does a += b (same shape).
func AddInPlace(a, b *Tensor) {
	mustSameShape("AddInPlace", a, b)
	ad, bd := a.Data, b.Data[:len(a.Data)]
	parallelFor(len(ad), elemCost, func(lo, hi int) {
		x, y := ad[lo:hi], bd[lo:hi]
		for i := range x {
			x[i] += y[i]
		}
	})
}

// Mul returns a * b elementwise (same shape).
func Mul(a, b *Tensor) *Tensor {
	mustSameShape("Mul", a, b)
	out := New(a.Shape...)
	ad, bd, od := a.Data, b.Data[:len(a.Data)], out.Data
	parallelFor(len(od), elemCost, func(lo, hi int) {
		o, x, y := od[lo:hi], ad[lo:hi], bd[lo:hi]
		for i := range o {
			o[i] = x[i] * y[i]
		}
	})
	return out
}

// Scale multiplies every element of t by s in place.
func Scale(t *Tensor, s float32) {
	d := t.Data
	parallelFor(len(d), elemCost, func(lo, hi int) {
		x := d[lo:hi]
		for i := range x {
			x[i] *= s
		}
	})
}

// SiLU applies x*sigmoid(x) in place.
func SiLU(t *Tensor) { siluSlice(t.Data) }

func siluSlice(d []float32) {
	parallelFor(len(d), actCost, func(lo, hi int) {
		vecSiLUAffine(d[lo:hi], d[lo:hi], 1, 0)
	})
}

// GELU applies the exact (erf) GELU in place.
func GELU(t *Tensor) { geluSlice(t.Data) }

func geluSlice(d []float32) {
	parallelFor(len(d), actCost, func(lo, hi int) {
		vecGELU(d[lo:hi], d[lo:hi])
	})
}

// GELUTanh applies the tanh approximation of GELU in place.
func GELUTanh(t *Tensor) {
	const c = 0.7978845608028654 // sqrt(2/pi)
	d := t.Data
	parallelFor(len(d), actCost, func(lo, hi int) {
		x := d[lo:hi]
		for i, v := range x {
			y := c * (v + 0.044715*v*v*v)
			// tanh(y) = 1 - 2/(exp(2y)+1); exact limits at both ends.
			th := 1 - 2/(expf(2*y)+1)
			x[i] = 0.5 * v * (1 + th)
		}
	})
}

// QuickGELU applies x*sigmoid(1.702x) in place (CLIP).
func QuickGELU(t *Tensor) {
	d := t.Data
	parallelFor(len(d), actCost, func(lo, hi int) {
		x := d[lo:hi]
		for i, v := range x {
			x[i] = v / (1 + expf(-1.702*v))
		}
	})
}

// AddChannelBias adds bias [C] to x [B, C, ...] in place, broadcast over the
// trailing dimensions (for a per-batch bias use AddBatchChannelBias).
func AddChannelBias(x *Tensor, bias []float32) {
	b, c := x.Shape[0], x.Shape[1]
	mustf(len(bias) >= c, "AddChannelBias", "bias has %d values for %d channels of %v", len(bias), c, x.Shape)
	inner := x.Numel() / (b * c)
	d := x.Data
	parallelFor(b*c, inner, func(lo, hi int) {
		for p := lo; p < hi; p++ {
			v := bias[p%c]
			seg := d[p*inner : (p+1)*inner]
			for i := range seg {
				seg[i] += v
			}
		}
	})
}

// AddBatchChannelBias adds bias [B, C] to x [B, C, ...] in place.
func AddBatchChannelBias(x *Tensor, bias *Tensor) {
	b, c := x.Shape[0], x.Shape[1]
	mustf(len(bias.Data) == b*c, "AddBatchChannelBias", "bias %v for x %v", bias.Shape, x.Shape)
	inner := x.Numel() / (b * c)
	d, bd := x.Data, bias.Data[:b*c]
	parallelFor(b*c, inner, func(lo, hi int) {
		for p := lo; p < hi; p++ {
			v := bd[p]
			seg := d[p*inner : (p+1)*inner]
			for i := range seg {
				seg[i] += v
			}
		}
	})
}
