// shape.go: layout helpers (concatenate, permute between channel-first and
// token-major layouts, split). Plain loops; no strided views.
package nn

// Concat joins tensors along dim; all other dimensions must match.
func Concat(dim int, ts ...*Tensor) *Tensor {
	first := ts[0]
	if dim < 0 {
		dim += len(first.Shape)
	}
	outer := 1
	for _, d := range first.Shape[:dim] {
		outer *= d
	}
	inner := 1
	for _, d := range first.Shape[dim+1:] {
		inner *= d
	}
	total := 0
	for _, t := range ts {
		total += t.Shape[dim]
	}
	shape := append([]int{}, first.Shape...)
	shape[dim] = total
	out := New(shape...)
	off := 0
	for o := 0; o < outer; o++ {
		for _, t := range ts {
			n := t.Shape[dim] * inner
			copy(out.Data[off:off+n], t.Data[o*n:(o+1)*n])
			off += n
		}
	}
	return out
}

// Split cuts x along its last dimension into parts of the given sizes.
func Split(x *Tensor, sizes ...int) []*Tensor {
	c := x.Shape[len(x.Shape)-1]
	rows := x.Numel() / c
	outs := make([]*Tensor, len(sizes))
	for i, s := range sizes {
		shape := append(append([]int{}, x.Shape[:len(x.Shape)-1]...), s)
		outs[i] = New(shape...)
	}
	for r := 0; r < rows; r++ {
		off := 0
		for i, s := range sizes {
			copy(outs[i].Data[r*s:(r+1)*s], x.Data[r*c+off:r*c+off+s])
			off += s
		}
	}
	return outs
}

// ChannelsLast turns x [B, C, H, W] into tokens [B, H*W, C].
func ChannelsLast(x *Tensor) *Tensor {
	b, c := x.Shape[0], x.Shape[1]
	hw := x.Numel() / (b * c)
	out := New(b, hw, c) // [B, HW, C]
	for n := 0; n < b; n++ {
		for ci := 0; ci < c; ci++ {
			for p := 0; p < hw; p++ {
				out.Data[(n*hw+p)*c+ci] = x.Data[(n*c+ci)*hw+p]
			}
		}
	}
	return out
}

// ChannelsFirst turns tokens x [B, H*W, C] into [B, C, H, W].
func ChannelsFirst(x *Tensor, h, w int) *Tensor {
	b, hw, c := x.Shape[0], x.Shape[1], x.Shape[2]
	out := New(b, c, h, w) // [B, C, H, W]
	for n := 0; n < b; n++ {
		for p := 0; p < hw; p++ {
			for ci := 0; ci < c; ci++ {
				out.Data[(n*c+ci)*hw+p] = x.Data[(n*hw+p)*c+ci]
			}
		}
	}
	return out
}

// GEGLU maps x [..., 2D] to [..., D]: the first half times GELU(second half)
// (diffusers/ldm GEGLU: hidden, gate = proj(x).chunk(2, dim=-1)).
func GEGLU(x *Tensor) *Tensor {
	c := x.Shape[len(x.Shape)-1]
	d := c / 2
	parts := Split(x, d, d)
	GELU(parts[1])
	for i := range parts[0].Data {
		parts[0].Data[i] *= parts[1].Data[i]
	}
	return parts[0]
}

// Mul returns a * b elementwise (same shape).
func Mul(a, b *Tensor) *Tensor {
	out := New(a.Shape...)
	for i := range out.Data {
		out.Data[i] = a.Data[i] * b.Data[i]
	}
	return out
}

// AddChannelBias adds bias [C] to x [B, C, ...] in place, broadcast over the
// trailing dimensions (e.g. a time embedding projected per channel: pass
// one bias per batch item with AddBatchChannelBias).
func AddChannelBias(x *Tensor, bias []float32) {
	b, c := x.Shape[0], x.Shape[1]
	inner := x.Numel() / (b * c)
	for n := 0; n < b; n++ {
		for ci := 0; ci < c; ci++ {
			v := bias[ci]
			seg := x.Data[(n*c+ci)*inner : (n*c+ci+1)*inner]
			for i := range seg {
				seg[i] += v
			}
		}
	}
}

// AddBatchChannelBias adds bias [B, C] to x [B, C, ...] in place.
func AddBatchChannelBias(x *Tensor, bias *Tensor) {
	b, c := x.Shape[0], x.Shape[1]
	inner := x.Numel() / (b * c)
	for n := 0; n < b; n++ {
		for ci := 0; ci < c; ci++ {
			v := bias.Data[n*c+ci]
			seg := x.Data[(n*c+ci)*inner : (n*c+ci+1)*inner]
			for i := range seg {
				seg[i] += v
			}
		}
	}
}
