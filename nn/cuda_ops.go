// cuda_ops.go: the nn compute engine on an NVIDIA GPU, part 2: the layer
// operations on GPUTensors, each the GPU twin of a CPU function in this
// package (same shapes, same maths, fp32): Linear and Conv2d through
// cuBLAS SGEMM (convolutions as im2col + GEMM per batch item), group norm
// (+ fused SiLU), layer norm, attention (scores by strided-batched GEMM,
// a row-softmax kernel, then P V), GEGLU, SiLU and Add through the CUDA C
// kernels in cuda/kernels. Correct before fast: it does not fuse, does
// not use fp16 or tensor cores, and materialises the full score matrix
// of one batch item ([heads, Lq, Lk]).
package nn

import (
	"fmt"
	"math"

	"github.com/sdbridge/sdbridge/cuda"
)

const cudaBlock = 256

// blas returns the cuBLAS handle or an error when cuBLAS is missing.
func (g *GPU) blas(op string) (*cuda.BLAS, error) {
	if g.BLAS == nil {
		return nil, fmt.Errorf("nn: cuda %s needs cuBLAS, which did not load", op)
	}
	return g.BLAS, nil
}

// gridFor returns a 1-D grid covering n elements with cudaBlock threads
// (capped; the kernels loop over the rest).
func gridFor(n int) cuda.Dim3 {
	b := (n + cudaBlock - 1) / cudaBlock
	return cuda.Dim3{X: uint32(min(max(b, 1), 1<<20))}
}

// launch runs kernel name of embedded file over grid with cudaBlock
// threads per block.
func (g *GPU) launch(file, name string, grid cuda.Dim3, args ...any) error {
	if g.Dev == nil {
		return fmt.Errorf("nn: cuda %s: no device", name)
	}
	f, err := g.Dev.Kernel(file, name)
	if err != nil {
		return err
	}
	return f.Launch(grid, cuda.Dim3{X: cudaBlock}, 0, args...)
}

// Linear computes x W^T + b on the GPU: x [..., in], w [out, in], bias
// [out] or nil; returns [..., out].
func (g *GPU) Linear(x, w, bias *GPUTensor) (*GPUTensor, error) {
	in := x.Shape[len(x.Shape)-1]
	out := w.Shape[0]
	if len(w.Shape) != 2 || w.Shape[1] != in {
		return nil, fmt.Errorf("nn: cuda Linear: weight %v does not fit input %v", w.Shape, x.Shape)
	}
	bl, err := g.blas("Linear")
	if err != nil {
		return nil, err
	}
	rows := x.Numel() / in
	shape := append(append([]int{}, x.Shape[:len(x.Shape)-1]...), out)
	y, err := g.Empty(shape...) // [..., out]
	if err != nil {
		return nil, err
	}
	if err := bl.Sgemm(false, true, rows, out, in, 1, x.Buf, in, w.Buf, in, 0, y.Buf, out); err != nil {
		y.Free()
		return nil, err
	}
	if bias != nil {
		n := y.Numel()
		if err := g.launch("elementwise.cu", "add_row_bias_f32", gridFor(n), y.Buf, bias.Buf, out, int64(n)); err != nil {
			y.Free()
			return nil, err
		}
	}
	return y, nil
}

// Conv2d convolves x [B, in, H, W] with w [out, in, kh, kw] (+ bias [out]
// or nil), stride and zero padding as nn.Conv2d; returns [B, out, H', W'].
func (g *GPU) Conv2d(x, w, bias *GPUTensor, stride, pad int) (*GPUTensor, error) {
	oc, ic, kh, kw := w.Shape[0], w.Shape[1], w.Shape[2], w.Shape[3]
	if len(x.Shape) != 4 || x.Shape[1] != ic {
		return nil, fmt.Errorf("nn: cuda Conv2d: weight %v does not fit input %v", w.Shape, x.Shape)
	}
	s := max(stride, 1)
	oh, ow := (x.Shape[2]+2*pad-kh)/s+1, (x.Shape[3]+2*pad-kw)/s+1
	y, err := g.Empty(x.Shape[0], oc, oh, ow) // [B, out, H', W']
	if err != nil {
		return nil, err
	}
	var cols *GPUTensor
	if !(kh == 1 && kw == 1 && s == 1 && pad == 0) {
		if cols, err = g.Empty(ic*kh*kw, oh*ow); err != nil { // [in*kh*kw, H'*W']
			y.Free()
			return nil, err
		}
		defer cols.Free()
	}
	if err := g.Conv2dInto(y, cols, x, w, bias, stride, pad); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// Conv2dInto is Conv2d writing into y [B, out, H', W'], with cols
// [in*kh*kw, H'*W'] as im2col scratch (nil for a 1x1, stride-1, unpadded
// convolution, which is a plain GEMM).
func (g *GPU) Conv2dInto(y, cols, x, w, bias *GPUTensor, stride, pad int) error {
	oc, ic, kh, kw := w.Shape[0], w.Shape[1], w.Shape[2], w.Shape[3]
	if len(x.Shape) != 4 || x.Shape[1] != ic {
		return fmt.Errorf("nn: cuda Conv2d: weight %v does not fit input %v", w.Shape, x.Shape)
	}
	bl, err := g.blas("Conv2d")
	if err != nil {
		return err
	}
	b, h, wd := x.Shape[0], x.Shape[2], x.Shape[3]
	s := max(stride, 1)
	oh, ow := (h+2*pad-kh)/s+1, (wd+2*pad-kw)/s+1
	opix, kdim := oh*ow, ic*kh*kw
	if y.Numel() != b*oc*opix {
		return fmt.Errorf("nn: cuda Conv2d: output %v, want [%d %d %d %d]", y.Shape, b, oc, oh, ow)
	}
	direct := kh == 1 && kw == 1 && s == 1 && pad == 0
	if !direct && (cols == nil || cols.Numel() < kdim*opix) {
		return fmt.Errorf("nn: cuda Conv2d: im2col scratch must hold [%d, %d]", kdim, opix)
	}
	for n := 0; n < b; n++ {
		xn, err := x.offset(n*ic*h*wd, ic*h*wd) // [in, H, W]
		if err != nil {
			return err
		}
		yn, err := y.offset(n*oc*opix, oc*opix) // [out, H'*W']
		if err != nil {
			return err
		}
		src := xn
		if !direct {
			if err := g.launch("conv.cu", "im2col_f32", gridFor(kdim*opix), xn, cols.Buf, ic, h, wd, kh, kw, s, pad, oh, ow); err != nil {
				return err
			}
			src = cols.Buf
		}
		// y_n [out, H'*W'] = w [out, in*kh*kw] cols [in*kh*kw, H'*W']
		if err := bl.Sgemm(false, false, oc, opix, kdim, 1, w.Buf, kdim, src, opix, 0, yn, opix); err != nil {
			return err
		}
	}
	if bias != nil {
		n := y.Numel()
		return g.launch("elementwise.cu", "add_channel_bias_f32", gridFor(n), y.Buf, bias.Buf, oc, int64(opix), int64(n))
	}
	return nil
}

// GroupNorm normalises x [B, C, ...] over groups (weight, bias [C] or
// nil), optionally followed by SiLU; returns a new tensor.
func (g *GPU) GroupNorm(x, weight, bias *GPUTensor, groups int, eps float32, silu bool) (*GPUTensor, error) {
	y, err := g.Empty(x.Shape...) // same shape as x
	if err != nil {
		return nil, err
	}
	if err := g.GroupNormInto(y, x, weight, bias, groups, eps, silu); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// GroupNormInto is GroupNorm writing into y (same shape as x; may be x).
func (g *GPU) GroupNormInto(y, x, weight, bias *GPUTensor, groups int, eps float32, silu bool) error {
	b, c := x.Shape[0], x.Shape[1]
	if groups <= 0 || c%groups != 0 {
		return fmt.Errorf("nn: cuda GroupNorm: %d channels in %d groups", c, groups)
	}
	if y.Numel() != x.Numel() {
		return fmt.Errorf("nn: cuda GroupNorm: output %v for input %v", y.Shape, x.Shape)
	}
	hw := x.Numel() / (b * c)
	s := 0
	if silu {
		s = 1
	}
	return g.launch("norm.cu", "group_norm_f32", cuda.Dim3{X: uint32(b * groups)}, x.Buf, y.Buf, bufOf(weight), bufOf(bias), c, hw, groups, eps, s)
}

// LayerNorm normalises x [..., D] over its last axis (weight, bias [D] or
// nil); returns a new tensor.
func (g *GPU) LayerNorm(x, weight, bias *GPUTensor, eps float32) (*GPUTensor, error) {
	d := x.Shape[len(x.Shape)-1]
	rows := x.Numel() / d
	y, err := g.Empty(x.Shape...) // same shape as x
	if err != nil {
		return nil, err
	}
	if err := g.launch("norm.cu", "layer_norm_f32", cuda.Dim3{X: uint32(rows)}, x.Buf, y.Buf, bufOf(weight), bufOf(bias), d, eps); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// SoftmaxRows replaces each row of n elements of x by softmax(scale * row).
func (g *GPU) SoftmaxRows(x *GPUTensor, n int, scale float32) error {
	rows := x.Numel() / n
	return g.launch("norm.cu", "softmax_rows_f32", cuda.Dim3{X: uint32(rows)}, x.Buf, n, scale)
}

// Attention computes softmax(q k^T * scale) v per head, as
// ScaledDotProductAttention without a bias: q [B, Lq, heads*d], k and v
// [B, Lk, heads*d]; scale 0 means 1/sqrt(d). Returns [B, Lq, heads*d].
func (g *GPU) Attention(q, k, v *GPUTensor, heads int, scale float32) (*GPUTensor, error) {
	b, lq, c := q.Shape[0], q.Shape[1], q.Shape[2]
	out, err := g.Empty(b, lq, c) // [B, Lq, heads*d]
	if err != nil {
		return nil, err
	}
	scores, err := g.Empty(heads, lq, k.Shape[1]) // [heads, Lq, Lk], one batch item at a time
	if err != nil {
		out.Free()
		return nil, err
	}
	defer scores.Free()
	if err := g.AttentionInto(out, scores, q, k, v, heads, scale); err != nil {
		out.Free()
		return nil, err
	}
	return out, nil
}

// AttentionInto is Attention writing into out [B, Lq, heads*d], with
// scores [heads, Lq, Lk] as scratch.
func (g *GPU) AttentionInto(out, scores, q, k, v *GPUTensor, heads int, scale float32) error {
	b, lq, c := q.Shape[0], q.Shape[1], q.Shape[2]
	lk := k.Shape[1]
	if c%heads != 0 || k.Shape[2] != c || v.Shape[2] != c || v.Shape[1] != lk || k.Shape[0] != b || v.Shape[0] != b {
		return fmt.Errorf("nn: cuda Attention: q %v, k %v, v %v with %d heads", q.Shape, k.Shape, v.Shape, heads)
	}
	if out.Numel() != q.Numel() || scores.Numel() < heads*lq*lk {
		return fmt.Errorf("nn: cuda Attention: out %v or scores %v too small for q %v, k %v", out.Shape, scores.Shape, q.Shape, k.Shape)
	}
	bl, err := g.blas("Attention")
	if err != nil {
		return err
	}
	d := c / heads
	if scale == 0 {
		scale = float32(1 / math.Sqrt(float64(d)))
	}
	for n := 0; n < b; n++ {
		// scores[h] = q[n, :, h*d:(h+1)*d] k[n, :, h*d:(h+1)*d]^T * scale
		if err := bl.SgemmStridedBatched(false, true, lq, lk, d, scale,
			q.Buf, n*lq*c, c, d, k.Buf, n*lk*c, c, d, 0, scores.Buf, 0, lk, lq*lk, heads); err != nil {
			return err
		}
		if err := g.launch("norm.cu", "softmax_rows_f32", cuda.Dim3{X: uint32(heads * lq)}, scores.Buf, lk, float32(1)); err != nil {
			return err
		}
		// out[n, :, h*d:(h+1)*d] = P[h] v[n, :, h*d:(h+1)*d]
		if err := bl.SgemmStridedBatched(false, false, lq, d, lk, 1,
			scores.Buf, 0, lk, lq*lk, v.Buf, n*lk*c, c, d, 0, out.Buf, n*lq*c, c, d, heads); err != nil {
			return err
		}
	}
	return nil
}

// GEGLU maps x [..., 2D] to [..., D] as nn.GEGLU.
func (g *GPU) GEGLU(x *GPUTensor) (*GPUTensor, error) {
	c := x.Shape[len(x.Shape)-1]
	if c%2 != 0 {
		return nil, fmt.Errorf("nn: cuda GEGLU: last axis %d is odd", c)
	}
	d := c / 2
	rows := x.Numel() / c
	shape := append(append([]int{}, x.Shape[:len(x.Shape)-1]...), d)
	y, err := g.Empty(shape...) // [..., D]
	if err != nil {
		return nil, err
	}
	if err := g.launch("elementwise.cu", "geglu_f32", gridFor(rows*d), x.Buf, y.Buf, int64(rows), d); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// SiLU applies x * sigmoid(x) in place.
func (g *GPU) SiLU(x *GPUTensor) error {
	n := x.Numel()
	return g.launch("elementwise.cu", "silu_f32", gridFor(n), x.Buf, int64(n))
}

// Add returns a + b (same shapes).
func (g *GPU) Add(a, b *GPUTensor) (*GPUTensor, error) {
	if a.Numel() != b.Numel() {
		return nil, fmt.Errorf("nn: cuda Add of %v and %v", a.Shape, b.Shape)
	}
	y, err := g.Empty(a.Shape...) // same shape as a
	if err != nil {
		return nil, err
	}
	if err := g.AddInto(y, a, b); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// AddInto writes a + b into y (y may be a or b).
func (g *GPU) AddInto(y, a, b *GPUTensor) error {
	n := a.Numel()
	if b.Numel() != n || y.Numel() != n {
		return fmt.Errorf("nn: cuda Add of %v and %v into %v", a.Shape, b.Shape, y.Shape)
	}
	return g.launch("elementwise.cu", "add_f32", gridFor(n), a.Buf, b.Buf, y.Buf, int64(n))
}

// bufOf returns t's buffer, or nil for a nil tensor (a null pointer).
func bufOf(t *GPUTensor) *cuda.Buffer {
	if t == nil {
		return nil
	}
	return t.Buf
}
