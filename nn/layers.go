// layers.go: the basic layers (Linear, Conv2d, GroupNorm, LayerNorm) as
// structs of weights plus Forward. Weights are float32 tensors in PyTorch
// layout. Reference implementations; fast paths keep these semantics.
package nn

import "math"

// Linear is y = x W^T + b. Weight [out, in], Bias [out] or nil.
type Linear struct {
	Weight *Tensor
	Bias   *Tensor
}

// Forward maps x [..., in] to [..., out].
func (l *Linear) Forward(x *Tensor) *Tensor {
	out, in := l.Weight.Shape[0], l.Weight.Shape[1]
	rows := x.Numel() / in
	shape := append(append([]int{}, x.Shape[:len(x.Shape)-1]...), out)
	y := New(shape...) // [..., out]
	Gemm(false, true, rows, out, in, 1, x.Data, in, l.Weight.Data, in, 0, y.Data, out)
	if l.Bias != nil {
		for r := 0; r < rows; r++ {
			row := y.Data[r*out : (r+1)*out]
			for j := range row {
				row[j] += l.Bias.Data[j]
			}
		}
	}
	return y
}

// Conv2d is a 2-D convolution. Weight [out, in, kh, kw], Bias [out] or nil.
type Conv2d struct {
	Weight  *Tensor
	Bias    *Tensor
	Stride  int
	Padding int
}

// Forward maps x [B, in, H, W] to [B, out, H', W'].
func (c *Conv2d) Forward(x *Tensor) *Tensor {
	oc, ic, kh, kw := c.Weight.Shape[0], c.Weight.Shape[1], c.Weight.Shape[2], c.Weight.Shape[3]
	b, h, w := x.Shape[0], x.Shape[2], x.Shape[3]
	s, p := max(c.Stride, 1), c.Padding
	oh, ow := (h+2*p-kh)/s+1, (w+2*p-kw)/s+1
	y := New(b, oc, oh, ow) // [B, out, H', W']
	for n := 0; n < b; n++ {
		for o := 0; o < oc; o++ {
			for oy := 0; oy < oh; oy++ {
				for ox := 0; ox < ow; ox++ {
					var sum float32
					if c.Bias != nil {
						sum = c.Bias.Data[o]
					}
					for i := 0; i < ic; i++ {
						for ky := 0; ky < kh; ky++ {
							iy := oy*s - p + ky
							if iy < 0 || iy >= h {
								continue
							}
							for kx := 0; kx < kw; kx++ {
								ix := ox*s - p + kx
								if ix < 0 || ix >= w {
									continue
								}
								sum += x.Data[((n*ic+i)*h+iy)*w+ix] * c.Weight.Data[((o*ic+i)*kh+ky)*kw+kx]
							}
						}
					}
					y.Data[((n*oc+o)*oh+oy)*ow+ox] = sum
				}
			}
		}
	}
	return y
}

// GroupNorm normalises x [B, C, ...] over groups of channels. Weight/Bias [C].
type GroupNorm struct {
	Groups int
	Eps    float32
	Weight *Tensor
	Bias   *Tensor
}

// Forward returns the normalised tensor (same shape as x).
func (g *GroupNorm) Forward(x *Tensor) *Tensor {
	b, c := x.Shape[0], x.Shape[1]
	hw := x.Numel() / (b * c)
	cg := c / g.Groups
	y := New(x.Shape...)
	for n := 0; n < b; n++ {
		for gi := 0; gi < g.Groups; gi++ {
			base := (n*c + gi*cg) * hw
			seg := x.Data[base : base+cg*hw]
			var mean, vr float64
			for _, v := range seg {
				mean += float64(v)
			}
			mean /= float64(len(seg))
			for _, v := range seg {
				d := float64(v) - mean
				vr += d * d
			}
			vr /= float64(len(seg))
			inv := 1 / math.Sqrt(vr+float64(g.Eps))
			for ci := 0; ci < cg; ci++ {
				ch := gi*cg + ci
				wgt, bias := g.Weight.Data[ch], g.Bias.Data[ch]
				for i := 0; i < hw; i++ {
					idx := base + ci*hw + i
					y.Data[idx] = float32((float64(x.Data[idx])-mean)*inv)*wgt + bias
				}
			}
		}
	}
	return y
}

// LayerNorm normalises the last dimension. Weight/Bias [C], or nil for no affine.
type LayerNorm struct {
	Eps    float32
	Weight *Tensor
	Bias   *Tensor
}

// Forward returns the normalised tensor (same shape as x [..., C]).
func (l *LayerNorm) Forward(x *Tensor) *Tensor {
	c := x.Shape[len(x.Shape)-1]
	y := New(x.Shape...)
	for r := 0; r < x.Numel()/c; r++ {
		row := x.Data[r*c : (r+1)*c]
		var mean, vr float64
		for _, v := range row {
			mean += float64(v)
		}
		mean /= float64(c)
		for _, v := range row {
			d := float64(v) - mean
			vr += d * d
		}
		vr /= float64(c)
		inv := 1 / math.Sqrt(vr+float64(l.Eps))
		out := y.Data[r*c : (r+1)*c]
		for i, v := range row {
			o := float32((float64(v) - mean) * inv)
			if l.Weight != nil {
				o *= l.Weight.Data[i]
			}
			if l.Bias != nil {
				o += l.Bias.Data[i]
			}
			out[i] = o
		}
	}
	return y
}

// AttentionOpts modifies ScaledDotProductAttention.
type AttentionOpts struct {
	// Scale multiplies q·k; 0 means 1/sqrt(head_dim). T5 uses 1 (set NoScale).
	Scale   float32
	NoScale bool
	// Bias is added to the scores: [1 or B, heads, Lq, Lk] (T5 position bias
	// plus mask), or nil.
	Bias *Tensor
}

// ScaledDotProductAttention computes softmax(q k^T * scale + bias) v per head.
// q [B, Lq, heads*d], k and v [B, Lk, heads*d]; returns [B, Lq, heads*d].
func ScaledDotProductAttention(q, k, v *Tensor, heads int, opt AttentionOpts) *Tensor {
	b, lq, c := q.Shape[0], q.Shape[1], q.Shape[2]
	lk := k.Shape[1]
	d := c / heads
	scale := opt.Scale
	if scale == 0 {
		scale = float32(1 / math.Sqrt(float64(d)))
	}
	if opt.NoScale {
		scale = 1
	}
	out := New(b, lq, c) // [B, Lq, C]
	scores := make([]float32, lk)
	for n := 0; n < b; n++ {
		for h := 0; h < heads; h++ {
			for i := 0; i < lq; i++ {
				qi := q.Data[(n*lq+i)*c+h*d : (n*lq+i)*c+h*d+d]
				for j := 0; j < lk; j++ {
					kj := k.Data[(n*lk+j)*c+h*d : (n*lk+j)*c+h*d+d]
					var s float32
					for e := range qi {
						s += qi[e] * kj[e]
					}
					s *= scale
					if opt.Bias != nil {
						bn := n
						if opt.Bias.Shape[0] == 1 {
							bn = 0
						}
						s += opt.Bias.Data[((bn*heads+h)*lq+i)*lk+j]
					}
					scores[j] = s
				}
				Softmax(scores, lk)
				o := out.Data[(n*lq+i)*c+h*d : (n*lq+i)*c+h*d+d]
				for j := 0; j < lk; j++ {
					vj := v.Data[(n*lk+j)*c+h*d : (n*lk+j)*c+h*d+d]
					for e := range o {
						o[e] += scores[j] * vj[e]
					}
				}
			}
		}
	}
	return out
}
