// cuda_ops.go: the nn compute engine on an NVIDIA GPU, part 2: the layer
// ops the models use (Linear, Conv2d, GroupNorm (+SiLU), LayerNorm, GEGLU,
// SiLU, Add), mirroring the CPU functions of this package on GPUTensors of
// either dtype. GEMMs are cuBLAS's: SGEMM for fp32 tensors (exact fp32,
// no TF32) and GemmEx for fp16 tensors (fp16 in and out, fp32
// accumulation), or cuBLASLt with the bias fused in its epilogue when
// GPU.Lt is set. Everything else is a kernel of cuda/kernels (one
// instantiation per dtype, fp32 arithmetic). Outputs take the dtype of
// the inputs; the *Into variants write into given tensors (no
// allocation). Attention is in cuda_attention.go, layout ops in
// cuda_shape.go, fused chains in cuda_fused.go, the convolution itself
// (per-side padding, im2col or implicit GEMM by GPU.ConvAlgo) in
// cuda_conv.go, batch broadcasting in cuda_broadcast.go.
//
// On an H100, what would make these faster: Conv2d runs im2col then one
// GEMM per batch item by default; a strided-batched GemmEx (weights with
// stride 0), or the implicit-GEMM kernel (ConvImplicitGEMM, untimed yet)
// once tuned, removes the 9x im2col traffic and the per-item launches. fp16 GEMMs hit
// the tensor cores at full rate when every leading dimension is a
// multiple of 8 halves (SD1.5's channel counts are; odd test shapes are
// not, which is only slower).
package nn

import (
	"fmt"

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
	return g.launchBlock(file, name, grid, cuda.Dim3{X: cudaBlock}, 0, args...)
}

// launchBlock runs kernel name of embedded file with the given grid,
// block and dynamic shared memory bytes.
func (g *GPU) launchBlock(file, name string, grid, block cuda.Dim3, shmem int, args ...any) error {
	if g.Dev == nil {
		return fmt.Errorf("nn: cuda %s: no device", name)
	}
	f, err := g.Dev.Kernel(file, name)
	if err != nil {
		return err
	}
	if err := f.Launch(grid, block, shmem, args...); err != nil {
		return fmt.Errorf("nn: cuda %s (%s): %w", name, file, err)
	}
	return nil
}

// opDType returns the dtype shared by the non-nil tensors ts, or an
// error naming op.
func opDType(op string, ts ...*GPUTensor) (GPUDType, error) {
	if err := sameDType(op, ts...); err != nil {
		return 0, err
	}
	for _, t := range ts {
		if t != nil {
			return t.DType, nil
		}
	}
	return GPUF32, nil
}

// gemm queues row-major C = alpha op(A) op(B) + beta C on buffers of
// dtype dt: SGEMM for fp32, GemmEx (fp32 accumulation) for fp16.
func (g *GPU) gemm(op string, dt GPUDType, transA, transB bool, m, n, k int, alpha float32, a *cuda.Buffer, lda int, b *cuda.Buffer, ldb int, beta float32, c *cuda.Buffer, ldc int) error {
	bl, err := g.blas(op)
	if err != nil {
		return err
	}
	if dt == GPUF32 {
		err = bl.Sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
	} else {
		err = bl.GemmEx(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, dt.blas(), dt.blas())
	}
	if err != nil {
		return fmt.Errorf("nn: cuda %s GEMM %dx%dx%d (%s): %w", op, m, n, k, dt, err)
	}
	return nil
}

// Linear computes x W^T + b on the GPU: x [..., in], w [out, in], bias
// [out] or nil; returns [..., out].
func (g *GPU) Linear(x, w, bias *GPUTensor) (*GPUTensor, error) {
	if len(w.Shape) != 2 {
		return nil, fmt.Errorf("nn: cuda Linear: weight %v is not 2-D", w.Shape)
	}
	shape := append(append([]int{}, x.Shape[:len(x.Shape)-1]...), w.Shape[0])
	y, err := g.EmptyOf(x.DType, shape...) // [..., out]
	if err != nil {
		return nil, err
	}
	if err := g.LinearInto(y, x, w, bias); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// LinearInto is Linear writing into y [..., out].
func (g *GPU) LinearInto(y, x, w, bias *GPUTensor) error { return g.linear(y, x, w, bias, 0) }

// LinearAddInto adds x W^T + b to y [..., out] (a residual connection
// folded into the GEMM: beta = 1, no separate add pass).
func (g *GPU) LinearAddInto(y, x, w, bias *GPUTensor) error { return g.linear(y, x, w, bias, 1) }

// linear is y = x W^T + bias + beta y.
func (g *GPU) linear(y, x, w, bias *GPUTensor, beta float32) error {
	in := x.Shape[len(x.Shape)-1]
	if len(w.Shape) != 2 || w.Shape[1] != in {
		return fmt.Errorf("nn: cuda Linear: weight %v does not fit input %v", w.Shape, x.Shape)
	}
	out := w.Shape[0]
	rows := x.Numel() / in
	if y.Numel() != rows*out || (bias != nil && bias.Numel() != out) {
		return fmt.Errorf("nn: cuda Linear: output %v or bias for input %v and weight %v", y.Shape, x.Shape, w.Shape)
	}
	dt, err := opDType("Linear", y, x, w, bias)
	if err != nil {
		return err
	}
	if g.Lt != nil {
		ep := cuda.EpilogueNone
		if bias != nil {
			ep = cuda.EpilogueBias
		}
		err := g.Lt.Matmul(cuda.Matmul{TransB: true, M: rows, N: out, K: in, A: x.Buf, LDA: in, B: w.Buf, LDB: in,
			C: y.Buf, LDC: out, Bias: bufOf(bias), Epilogue: ep, Type: dt.blas(), Alpha: 1, Beta: beta})
		if err != nil {
			return fmt.Errorf("nn: cuda Linear %v x %v^T: %w", x.Shape, w.Shape, err)
		}
		return nil
	}
	// y [rows, out] = x [rows, in] w [out, in]^T + beta y
	if err := g.gemm("Linear", dt, false, true, rows, out, in, 1, x.Buf, in, w.Buf, in, beta, y.Buf, out); err != nil {
		return err
	}
	if bias != nil {
		n := rows * out
		return g.launch("elementwise.cu", dt.kernel("add_row_bias"), gridFor(n), y.Buf, bias.Buf, out, int64(n))
	}
	return nil
}

// Conv2d convolves x [B, in, H, W] with w [out, in, kh, kw] (+ bias [out]
// or nil), stride and zero padding as nn.Conv2d; returns [B, out, H', W'].
func (g *GPU) Conv2d(x, w, bias *GPUTensor, stride, pad int) (*GPUTensor, error) {
	if len(w.Shape) != 4 || len(x.Shape) != 4 {
		return nil, fmt.Errorf("nn: cuda Conv2d: weight %v, input %v", w.Shape, x.Shape)
	}
	oc, kh, kw := w.Shape[0], w.Shape[2], w.Shape[3]
	s := max(stride, 1)
	oh, ow := (x.Shape[2]+2*pad-kh)/s+1, (x.Shape[3]+2*pad-kw)/s+1
	y, err := g.EmptyOf(x.DType, x.Shape[0], oc, oh, ow) // [B, out, H', W']
	if err != nil {
		return nil, err
	}
	cols, err := g.ConvScratch(x, w, stride, pad) // [in*kh*kw, H'*W'] or nil
	if err != nil {
		y.Free()
		return nil, err
	}
	defer cols.Free()
	if err := g.Conv2dInto(y, cols, x, w, bias, stride, pad); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// ConvScratch allocates the im2col scratch Conv2dInto needs for x and w
// ([in*kh*kw, H'*W'] of x's dtype), or returns nil for a 1x1, stride-1,
// unpadded convolution (a plain GEMM) and for the implicit GEMM (fp16
// with GPU.ConvAlgo = ConvImplicitGEMM).
func (g *GPU) ConvScratch(x, w *GPUTensor, stride, pad int) (*GPUTensor, error) {
	ic, kh, kw := w.Shape[1], w.Shape[2], w.Shape[3]
	s := max(stride, 1)
	direct := kh == 1 && kw == 1 && s == 1 && pad == 0
	if direct || g.implicitConv(x, direct) {
		return nil, nil
	}
	oh, ow := (x.Shape[2]+2*pad-kh)/s+1, (x.Shape[3]+2*pad-kw)/s+1
	return g.EmptyOf(x.DType, ic*kh*kw, oh*ow) // [in*kh*kw, H'*W']
}

// Conv2dInto is Conv2d writing into y [B, out, H', W'], with cols
// [in*kh*kw, H'*W'] as im2col scratch (nil for a 1x1, stride-1, unpadded
// convolution, which is a plain GEMM).
func (g *GPU) Conv2dInto(y, cols, x, w, bias *GPUTensor, stride, pad int) error {
	return g.conv2d(y, cols, x, w, bias, stride, pad, 0)
}

// Conv2dAddInto adds the convolution (+ bias) to y [B, out, H', W'] (a
// ResBlock's skip connection folded into the GEMM: beta = 1).
func (g *GPU) Conv2dAddInto(y, cols, x, w, bias *GPUTensor, stride, pad int) error {
	return g.conv2d(y, cols, x, w, bias, stride, pad, 1)
}

func (g *GPU) conv2d(y, cols, x, w, bias *GPUTensor, stride, pad int, beta float32) error {
	return g.conv2dPad(y, cols, x, w, bias, stride, ConvPad{Top: pad, Left: pad, Bottom: pad, Right: pad}, beta)
}

// GroupNorm normalises x [B, C, ...] over groups (weight, bias [C] or
// nil), optionally followed by SiLU; returns a new tensor.
func (g *GPU) GroupNorm(x, weight, bias *GPUTensor, groups int, eps float32, silu bool) (*GPUTensor, error) {
	y, err := g.EmptyOf(x.DType, x.Shape...) // same shape as x
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
	return g.GroupNormEx(y, x, nil, weight, bias, groups, eps, silu)
}

// GroupNormEx is GroupNormInto of x + pre, with pre [B, C] added per
// batch item and channel, or [C] per channel (the same for every item), or
// nil: a ResBlock's "h += temb; h = SiLU(norm2(h))" in one kernel, with h
// itself never written (fold the conv bias into pre too), or a VAE
// resnet's conv1 bias as a [C] pre-add. y may be x.
func (g *GPU) GroupNormEx(y, x, pre, weight, bias *GPUTensor, groups int, eps float32, silu bool) error {
	if len(x.Shape) < 2 {
		return fmt.Errorf("nn: cuda GroupNorm: input %v has no channel axis", x.Shape)
	}
	b, c := x.Shape[0], x.Shape[1]
	if groups <= 0 || c%groups != 0 {
		return fmt.Errorf("nn: cuda GroupNorm: %d channels in %d groups", c, groups)
	}
	if y.Numel() != x.Numel() || (pre != nil && pre.Numel() != b*c && pre.Numel() != c) ||
		(weight != nil && weight.Numel() != c) || (bias != nil && bias.Numel() != c) {
		return fmt.Errorf("nn: cuda GroupNorm: output %v, pre-add, weight or bias does not fit input %v", y.Shape, x.Shape)
	}
	dt, err := opDType("GroupNorm", y, x, pre, weight, bias)
	if err != nil {
		return err
	}
	hw := x.Numel() / (b * c)
	s := 0
	if silu {
		s = 1
	}
	grid, block := cuda.Dim3{X: uint32(b * groups)}, cuda.Dim3{X: uint32(groupNormThreads(c / groups * hw))}
	if pre == nil {
		return g.launchBlock("norm.cu", dt.kernel("group_norm"), grid, block, 0, x.Buf, y.Buf, bufOf(weight), bufOf(bias), c, hw, groups, eps, s)
	}
	preB := int64(c) // [B, C]; [C] when b == 1 reads the same
	if pre.Numel() != b*c {
		preB = 0 // [C]: every batch item
	}
	return g.launchBlock("norm.cu", dt.kernel("group_norm_ex"), grid, block, 0, x.Buf, y.Buf, pre.Buf, bufOf(weight), bufOf(bias), c, hw, groups, eps, s, preB)
}

// groupNormThreads is the block size for a group of n elements: one
// thread per 8 elements (one 16-byte fp16 access), a multiple of 32 in
// [32, 1024].
func groupNormThreads(n int) int {
	return min(max((n/8+31)&^31, 32), 1024)
}

// LayerNorm normalises x [..., D] over its last axis (weight, bias [D] or
// nil); returns a new tensor.
func (g *GPU) LayerNorm(x, weight, bias *GPUTensor, eps float32) (*GPUTensor, error) {
	y, err := g.EmptyOf(x.DType, x.Shape...) // same shape as x
	if err != nil {
		return nil, err
	}
	if err := g.LayerNormInto(y, x, weight, bias, eps); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// LayerNormInto is LayerNorm writing into y (same size as x; may be x).
func (g *GPU) LayerNormInto(y, x, weight, bias *GPUTensor, eps float32) error {
	d := x.Shape[len(x.Shape)-1]
	if y.Numel() != x.Numel() || (weight != nil && weight.Numel() != d) || (bias != nil && bias.Numel() != d) {
		return fmt.Errorf("nn: cuda LayerNorm: output %v, weight or bias does not fit input %v", y.Shape, x.Shape)
	}
	dt, err := opDType("LayerNorm", y, x, weight, bias)
	if err != nil {
		return err
	}
	rows := x.Numel() / d
	return g.launch("norm.cu", dt.kernel("layer_norm"), cuda.Dim3{X: uint32(rows)}, x.Buf, y.Buf, bufOf(weight), bufOf(bias), d, eps)
}

// SoftmaxRows replaces each row of n elements of x by softmax(scale * row).
func (g *GPU) SoftmaxRows(x *GPUTensor, n int, scale float32) error {
	if n <= 0 || x.Numel()%n != 0 {
		return fmt.Errorf("nn: cuda SoftmaxRows: rows of %d in %v", n, x.Shape)
	}
	rows := x.Numel() / n
	return g.launch("norm.cu", x.DType.kernel("softmax_rows"), cuda.Dim3{X: uint32(rows)}, x.Buf, n, scale)
}

// GEGLU maps x [..., 2D] to [..., D] as nn.GEGLU.
func (g *GPU) GEGLU(x *GPUTensor) (*GPUTensor, error) {
	c := x.Shape[len(x.Shape)-1]
	shape := append(append([]int{}, x.Shape[:len(x.Shape)-1]...), c/2)
	y, err := g.EmptyOf(x.DType, shape...) // [..., D]
	if err != nil {
		return nil, err
	}
	if err := g.GEGLUInto(y, x, nil); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// GEGLUInto writes GEGLU(x + bias) into y [..., D]: x [..., 2D], bias
// [2D] (the projection's bias, folded in here) or nil.
func (g *GPU) GEGLUInto(y, x, bias *GPUTensor) error {
	c := x.Shape[len(x.Shape)-1]
	if c%2 != 0 {
		return fmt.Errorf("nn: cuda GEGLU: last axis %d is odd", c)
	}
	d := c / 2
	rows := x.Numel() / c
	if y.Numel() != rows*d || (bias != nil && bias.Numel() != c) {
		return fmt.Errorf("nn: cuda GEGLU: output %v or bias for input %v", y.Shape, x.Shape)
	}
	dt, err := opDType("GEGLU", y, x, bias)
	if err != nil {
		return err
	}
	if bias == nil {
		return g.launch("elementwise.cu", dt.kernel("geglu"), gridFor(rows*d), x.Buf, y.Buf, int64(rows), d)
	}
	return g.launch("elementwise.cu", dt.kernel("geglu_bias"), gridFor(rows*d), x.Buf, bias.Buf, y.Buf, int64(rows), d)
}

// SiLU applies x * sigmoid(x) in place.
func (g *GPU) SiLU(x *GPUTensor) error {
	n := x.Numel()
	return g.launch("elementwise.cu", x.DType.kernel("silu"), gridFor(n), x.Buf, int64(n))
}

// Add returns a + b (same shapes).
func (g *GPU) Add(a, b *GPUTensor) (*GPUTensor, error) {
	if a.Numel() != b.Numel() {
		return nil, fmt.Errorf("nn: cuda Add of %v and %v", a.Shape, b.Shape)
	}
	y, err := g.EmptyOf(a.DType, a.Shape...) // same shape as a
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
	dt, err := opDType("Add", y, a, b)
	if err != nil {
		return err
	}
	return g.launch("elementwise.cu", dt.kernel("add"), gridFor(n), a.Buf, b.Buf, y.Buf, int64(n))
}

// AddRowBias adds bias [N] to every row of x [..., N] in place.
func (g *GPU) AddRowBias(x, bias *GPUTensor) error {
	n := x.Numel()
	nb := bias.Numel()
	if nb == 0 || n%nb != 0 {
		return fmt.Errorf("nn: cuda AddRowBias: bias %v for x %v", bias.Shape, x.Shape)
	}
	dt, err := opDType("AddRowBias", x, bias)
	if err != nil {
		return err
	}
	return g.launch("elementwise.cu", dt.kernel("add_row_bias"), gridFor(n), x.Buf, bias.Buf, nb, int64(n))
}

// bufOf returns t's buffer, or nil for a nil tensor (a null pointer).
func bufOf(t *GPUTensor) *cuda.Buffer {
	if t == nil {
		return nil
	}
	return t.Buf
}
