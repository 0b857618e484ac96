// norm.go: GroupNorm and LayerNorm, with statistics accumulated in float64
// (two passes: mean, then centred variance) and the affine step folded
// into one multiply-add per element. GroupNorm is parallel over (batch,
// group), LayerNorm over rows. It does not implement BatchNorm or
// running statistics.
package nn

import "math"

// GroupNorm normalises x [B, C, ...] over groups of channels. Weight/Bias [C].
type GroupNorm struct {
	Groups int
	Eps    float32
	Weight *Tensor
	Bias   *Tensor
}

// Forward returns the normalised tensor (same shape as x).
func (g *GroupNorm) Forward(x *Tensor) *Tensor {
	y := New(x.Shape...) // same shape as x
	g.apply(x, y, false)
	return y
}

// ForwardSiLU returns SiLU(GroupNorm(x)) in one pass (the ldm
// "normalize then nonlinearity" pair).
func (g *GroupNorm) ForwardSiLU(x *Tensor) *Tensor {
	y := New(x.Shape...) // same shape as x
	g.apply(x, y, true)
	return y
}

// ForwardInPlace normalises x in place (optionally followed by SiLU).
func (g *GroupNorm) ForwardInPlace(x *Tensor, silu bool) { g.apply(x, x, silu) }

func (g *GroupNorm) apply(x, y *Tensor, silu bool) {
	mustf(len(x.Shape) >= 2 && g.Groups > 0 && x.Shape[1]%g.Groups == 0, "GroupNorm", "%d groups for input %v", g.Groups, x.Shape)
	b, c := x.Shape[0], x.Shape[1]
	hw := x.Numel() / (b * c)
	cg := c / g.Groups
	groups := g.Groups
	xd, yd := x.Data, y.Data
	var wd, bd []float32
	if g.Weight != nil {
		wd = g.Weight.Data[:c]
	}
	if g.Bias != nil {
		bd = g.Bias.Data[:c]
	}
	parallelTasks(b*groups, 4*cg*hw, func(task int) {
		n, gi := task/groups, task%groups
		base := (n*c + gi*cg) * hw
		seg := xd[base : base+cg*hw]
		mean, inv := meanInvStd(seg, float64(g.Eps))
		for ci := 0; ci < cg; ci++ {
			ch := gi*cg + ci
			sc, sh := float32(inv), float32(-mean*inv)
			if wd != nil {
				sc, sh = float32(inv*float64(wd[ch])), float32(-mean*inv*float64(wd[ch]))
			}
			if bd != nil {
				sh += bd[ch]
			}
			src := xd[base+ci*hw : base+(ci+1)*hw]
			dst := yd[base+ci*hw : base+(ci+1)*hw]
			if silu {
				vecSiLUAffine(dst, src, sc, sh)
			} else {
				vecAffine(dst, src, sc, sh)
			}
		}
	})
}

// meanInvStd returns the mean and 1/sqrt(var+eps) of seg (biased variance),
// accumulated in float64.
func meanInvStd(seg []float32, eps float64) (mean, inv float64) {
	var s0, s1, s2, s3 float64
	i := 0
	for ; i+4 <= len(seg); i += 4 {
		r := seg[i : i+4 : i+4]
		s0 += float64(r[0])
		s1 += float64(r[1])
		s2 += float64(r[2])
		s3 += float64(r[3])
	}
	for ; i < len(seg); i++ {
		s0 += float64(seg[i])
	}
	mean = (s0 + s1 + s2 + s3) / float64(len(seg))
	s0, s1, s2, s3 = 0, 0, 0, 0
	i = 0
	for ; i+4 <= len(seg); i += 4 {
		r := seg[i : i+4 : i+4]
		d0, d1, d2, d3 := float64(r[0])-mean, float64(r[1])-mean, float64(r[2])-mean, float64(r[3])-mean
		s0 += d0 * d0
		s1 += d1 * d1
		s2 += d2 * d2
		s3 += d3 * d3
	}
	for ; i < len(seg); i++ {
		d := float64(seg[i]) - mean
		s0 += d * d
	}
	vr := (s0 + s1 + s2 + s3) / float64(len(seg))
	return mean, 1 / math.Sqrt(vr+eps)
}

// LayerNorm normalises the last dimension. Weight/Bias [C], or nil for no affine.
type LayerNorm struct {
	Eps    float32
	Weight *Tensor
	Bias   *Tensor
}

// Forward returns the normalised tensor (same shape as x [..., C]).
func (l *LayerNorm) Forward(x *Tensor) *Tensor {
	y := New(x.Shape...) // [..., C]
	l.apply(x, y)
	return y
}

// ForwardInPlace normalises x [..., C] in place.
func (l *LayerNorm) ForwardInPlace(x *Tensor) { l.apply(x, x) }

func (l *LayerNorm) apply(x, y *Tensor) {
	c := x.Shape[len(x.Shape)-1]
	rows := x.Numel() / c
	xd, yd := x.Data, y.Data
	var wd, bd []float32
	if l.Weight != nil {
		wd = l.Weight.Data[:c]
	}
	if l.Bias != nil {
		bd = l.Bias.Data[:c]
	}
	eps := float64(l.Eps)
	parallelFor(rows, 4*c, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			row := xd[r*c : (r+1)*c]
			out := yd[r*c : (r+1)*c]
			mean, inv := meanInvStd(row, eps)
			m32, i32 := float32(mean), float32(inv)
			switch {
			case wd != nil && bd != nil:
				for i, v := range row {
					out[i] = (v-m32)*i32*wd[i] + bd[i]
				}
			case wd != nil:
				for i, v := range row {
					out[i] = (v - m32) * i32 * wd[i]
				}
			default:
				for i, v := range row {
					o := (v - m32) * i32
					if bd != nil {
						o += bd[i]
					}
					out[i] = o
				}
			}
		}
	})
}
