// shape.go: layout helpers (concatenate, split, permute between
// channel-first and token-major layouts, nearest upsampling, GEGLU's
// chunk-and-gate). Transposes are cache-blocked and parallel; there are no
// strided views, every helper returns a fresh dense tensor.
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
	parallelFor(outer, total*inner, func(lo, hi int) {
		for o := lo; o < hi; o++ {
			off := o * total * inner
			for _, t := range ts {
				n := t.Shape[dim] * inner
				copy(out.Data[off:off+n], t.Data[o*n:(o+1)*n])
				off += n
			}
		}
	})
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
	parallelFor(rows, c, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			off := 0
			for i, s := range sizes {
				copy(outs[i].Data[r*s:(r+1)*s], x.Data[r*c+off:r*c+off+s])
				off += s
			}
		}
	})
	return outs
}

// transposeBlock is the tile edge for cache-blocked transposes.
const transposeBlock = 32

// transpose writes dst[j*rows+i] = src[i*cols+j] for a rows x cols matrix,
// parallel over column tiles.
func transpose(dst, src []float32, rows, cols int) {
	tiles := (cols + transposeBlock - 1) / transposeBlock
	parallelFor(tiles, rows*transposeBlock, func(lo, hi int) {
		for j0 := lo * transposeBlock; j0 < min(hi*transposeBlock, cols); j0 += transposeBlock {
			j1 := min(j0+transposeBlock, cols)
			for i0 := 0; i0 < rows; i0 += transposeBlock {
				i1 := min(i0+transposeBlock, rows)
				for i := i0; i < i1; i++ {
					s := src[i*cols+j0 : i*cols+j1]
					for jj, v := range s {
						dst[(j0+jj)*rows+i] = v
					}
				}
			}
		}
	})
}

// ChannelsLast turns x [B, C, H, W] into tokens [B, H*W, C].
func ChannelsLast(x *Tensor) *Tensor {
	b, c := x.Shape[0], x.Shape[1]
	hw := x.Numel() / (b * c)
	out := New(b, hw, c) // [B, HW, C]
	for n := 0; n < b; n++ {
		transpose(out.Data[n*hw*c:(n+1)*hw*c], x.Data[n*c*hw:(n+1)*c*hw], c, hw)
	}
	return out
}

// ChannelsFirst turns tokens x [B, H*W, C] into [B, C, H, W].
func ChannelsFirst(x *Tensor, h, w int) *Tensor {
	b, hw, c := x.Shape[0], x.Shape[1], x.Shape[2]
	out := New(b, c, h, w) // [B, C, H, W]
	for n := 0; n < b; n++ {
		transpose(out.Data[n*hw*c:(n+1)*hw*c], x.Data[n*hw*c:(n+1)*hw*c], hw, c)
	}
	return out
}

// GEGLU maps x [..., 2D] to [..., D]: the first half times GELU(second half)
// (diffusers/ldm GEGLU: hidden, gate = proj(x).chunk(2, dim=-1)).
func GEGLU(x *Tensor) *Tensor {
	c := x.Shape[len(x.Shape)-1]
	d := c / 2
	rows := x.Numel() / c
	shape := append(append([]int{}, x.Shape[:len(x.Shape)-1]...), d)
	out := New(shape...) // [..., D]
	parallelFor(rows, d*actCost, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			h := x.Data[r*c : r*c+d]
			g := x.Data[r*c+d : r*c+c]
			o := out.Data[r*d : (r+1)*d]
			vecGEGLU(o, h, g)
		}
	})
	return out
}

// UpsampleNearest2x doubles H and W of x [B, C, H, W].
func UpsampleNearest2x(x *Tensor) *Tensor {
	b, c, h, w := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	out := New(b, c, 2*h, 2*w) // [B, C, 2H, 2W]
	parallelFor(b*c, 4*h*w, func(lo, hi int) {
		for p := lo; p < hi; p++ {
			src := x.Data[p*h*w : (p+1)*h*w]
			dst := out.Data[p*4*h*w : (p+1)*4*h*w]
			for y := 0; y < h; y++ {
				srow := src[y*w : (y+1)*w]
				d0 := dst[(2*y)*2*w : (2*y+1)*2*w]
				for xx, v := range srow {
					d0[2*xx] = v
					d0[2*xx+1] = v
				}
				copy(dst[(2*y+1)*2*w:(2*y+2)*2*w], d0)
			}
		}
	})
	return out
}
