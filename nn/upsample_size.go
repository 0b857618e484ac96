// upsample_size.go: nearest-neighbour resizing of [B, C, H, W] to any
// output size, as torch's F.interpolate(x, size=(h, w), mode="nearest").
// The U-Net decoder uses it when a skip tensor is not exactly twice the
// size of the level below (odd latent sides: the stride-2 downsampler gave
// ceil(H/2)), as ldm/ComfyUI's Upsample with output_shape does.
//
// It follows torch's index rule exactly (float32 scale in/out, floor,
// clamped; exact 2x as dst/2), not 'nearest-exact', and does no other
// interpolation mode. Exact 2x is delegated to UpsampleNearest2x.
package nn

import (
	"fmt"
	"math"
)

// nearestIndex maps output indices to input indices along one axis as
// torch's nearest_idx does: identity for equal sizes, dst>>1 for exact 2x,
// else min(floor(dst * (float32(in)/float32(out))), in-1).
func nearestIndex(in, out int) []int {
	idx := make([]int, out)
	switch {
	case out == in:
		for i := range idx {
			idx[i] = i
		}
	case out == 2*in:
		for i := range idx {
			idx[i] = i >> 1
		}
	default:
		scale := float32(in) / float32(out)
		for i := range idx {
			idx[i] = min(int(math.Floor(float64(float32(i)*scale))), in-1)
		}
	}
	return idx
}

// UpsampleNearest resizes x [B, C, H, W] to [B, C, h, w] by nearest
// neighbour (src = floor(dst * in/out)). It panics on a non-4-D x or a
// non-positive size, like the other shape helpers on misuse.
func UpsampleNearest(x *Tensor, h, w int) *Tensor {
	if len(x.Shape) != 4 || h <= 0 || w <= 0 {
		panic(fmt.Sprintf("nn: UpsampleNearest of %v to %dx%d", x.Shape, h, w))
	}
	b, c, ih, iw := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	if h == 2*ih && w == 2*iw {
		return UpsampleNearest2x(x) // [B, C, 2H, 2W]
	}
	ys, xs := nearestIndex(ih, h), nearestIndex(iw, w)
	out := New(b, c, h, w) // [B, C, h, w]
	parallelFor(b*c, h*w, func(lo, hi int) {
		for p := lo; p < hi; p++ {
			src := x.Data[p*ih*iw : (p+1)*ih*iw] // [H, W]
			dst := out.Data[p*h*w : (p+1)*h*w]   // [h, w]
			for y, sy := range ys {
				row := dst[y*w : (y+1)*w]
				if y > 0 && sy == ys[y-1] {
					copy(row, dst[(y-1)*w:y*w]) // same source row as the previous one
					continue
				}
				srow := src[sy*iw : (sy+1)*iw]
				for i, sx := range xs {
					row[i] = srow[sx]
				}
			}
		}
	})
	return out
}
