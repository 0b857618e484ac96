// ref_test.go: the plain reference loops the fast kernels replaced, kept
// as test oracles (straight from the first, loop-only version of nn). They
// are deliberately slow and allocation-happy; do not optimise them.
package nn

import "math"

func refGemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
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
				s += float64(av) * float64(bv)
			}
			if beta == 0 {
				c[i*ldc+j] = alpha * float32(s)
			} else {
				c[i*ldc+j] = alpha*float32(s) + beta*c[i*ldc+j]
			}
		}
	}
}

func refSiLU(x float32) float32 { return x / (1 + float32(math.Exp(float64(-x)))) }

func refGELU(x float32) float32 {
	return 0.5 * x * (1 + float32(math.Erf(float64(x)/math.Sqrt2)))
}

func refGELUTanh(x float32) float32 {
	const c = 0.7978845608028654
	x64 := float64(x)
	return float32(0.5 * x64 * (1 + math.Tanh(c*(x64+0.044715*x64*x64*x64))))
}

func refQuickGELU(x float32) float32 { return x / (1 + float32(math.Exp(float64(-1.702*x)))) }

func refSoftmax(x []float32, n int) {
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

func refUpsampleNearest2x(x *Tensor) *Tensor {
	b, c, h, w := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	out := New(b, c, 2*h, 2*w)
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

func refLinear(l *Linear, x *Tensor) *Tensor {
	out, in := l.Weight.Shape[0], l.Weight.Shape[1]
	rows := x.Numel() / in
	shape := append(append([]int{}, x.Shape[:len(x.Shape)-1]...), out)
	y := New(shape...)
	refGemm(false, true, rows, out, in, 1, x.Data, in, l.Weight.Data, in, 0, y.Data, out)
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

func refConv2d(c *Conv2d, x *Tensor) *Tensor {
	oc, ic, kh, kw := c.Weight.Shape[0], c.Weight.Shape[1], c.Weight.Shape[2], c.Weight.Shape[3]
	b, h, w := x.Shape[0], x.Shape[2], x.Shape[3]
	s, p := max(c.Stride, 1), c.Padding
	oh, ow := (h+2*p-kh)/s+1, (w+2*p-kw)/s+1
	y := New(b, oc, oh, ow)
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

func refGroupNorm(g *GroupNorm, x *Tensor) *Tensor {
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

func refLayerNorm(l *LayerNorm, x *Tensor) *Tensor {
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

func refAttention(q, k, v *Tensor, heads int, opt AttentionOpts) *Tensor {
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
	out := New(b, lq, c)
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
						bn, bh := n, h
						if opt.Bias.Shape[0] == 1 {
							bn = 0
						}
						if opt.Bias.Shape[1] == 1 {
							bh = 0
						}
						s += opt.Bias.Data[((bn*opt.Bias.Shape[1]+bh)*lq+i)*lk+j]
					}
					scores[j] = s
				}
				refSoftmax(scores, lk)
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

func refChannelsLast(x *Tensor) *Tensor {
	b, c := x.Shape[0], x.Shape[1]
	hw := x.Numel() / (b * c)
	out := New(b, hw, c)
	for n := 0; n < b; n++ {
		for ci := 0; ci < c; ci++ {
			for p := 0; p < hw; p++ {
				out.Data[(n*hw+p)*c+ci] = x.Data[(n*c+ci)*hw+p]
			}
		}
	}
	return out
}

func refChannelsFirst(x *Tensor, h, w int) *Tensor {
	b, hw, c := x.Shape[0], x.Shape[1], x.Shape[2]
	out := New(b, c, h, w)
	for n := 0; n < b; n++ {
		for p := 0; p < hw; p++ {
			for ci := 0; ci < c; ci++ {
				out.Data[(n*c+ci)*hw+p] = x.Data[(n*hw+p)*c+ci]
			}
		}
	}
	return out
}
