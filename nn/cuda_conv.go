// cuda_conv.go: the nn compute engine on an NVIDIA GPU, part 6: 2-D
// convolution as im2col (cuda/kernels/conv.cu) + one GEMM per batch item,
// or, for fp16 when GPU.ConvAlgo says so, as one implicit-GEMM kernel on
// tensor cores (no im2col buffer); padding given per side (ConvPad), so
// ldm's VAE Downsample, F.pad(x, (0, 1, 0, 1)) then a 3x3 stride-2 conv,
// runs without a padded copy of its input. The symmetric-padding entry
// points (Conv2d, ConvScratch, Conv2dInto, Conv2dAddInto) are in
// cuda_ops.go and land here. No dilation or groups.
package nn

import (
	"fmt"

	"github.com/sdbridge/sdbridge/cuda"
)

// ConvAlgo selects the GPU convolution algorithm for fp16 tensors.
type ConvAlgo int

const (
	// ConvIm2col writes the im2col matrix to a scratch buffer and
	// multiplies it with cuBLAS (the default: cuBLAS's tuned GEMMs).
	ConvIm2col ConvAlgo = iota
	// ConvImplicitGEMM gathers the im2col tiles into shared memory inside
	// one tensor-core kernel (conv_igemm_f16): no scratch buffer (47 MB
	// for a 320-channel 3x3 conv at 512 px, batch 2). To be timed against
	// ConvIm2col on a GPU before it becomes the default.
	ConvImplicitGEMM
)

// implicitConv reports whether a conv on x runs as the implicit GEMM: fp16
// storage, GPU.ConvAlgo = ConvImplicitGEMM, and not a plain 1x1 GEMM.
func (g *GPU) implicitConv(x *GPUTensor, direct bool) bool {
	return g.ConvAlgo == ConvImplicitGEMM && x.DType == GPUF16 && !direct
}

// ConvPad is a convolution's zero padding per side, in pixels.
type ConvPad struct{ Top, Left, Bottom, Right int }

// OutSize is the output height and width of a kh x kw convolution with
// this padding and stride (0 counts as 1) on an h x w input.
func (p ConvPad) OutSize(h, w, kh, kw, stride int) (int, int) {
	s := max(stride, 1)
	return (h+p.Top+p.Bottom-kh)/s + 1, (w+p.Left+p.Right-kw)/s + 1
}

// Conv2dPadInto writes the convolution of x [B, in, H, W] with w [out,
// in, kh, kw] (+ bias [out] or nil) into y [B, out, H', W'], the input
// zero-padded by pad, using a scratch im2col buffer it allocates.
//
//	CPU equivalent: c.Forward(pad x), e.g. models' vaePadRightBottom then Conv2d
func (g *GPU) Conv2dPadInto(y, x, w, bias *GPUTensor, stride int, pad ConvPad) error {
	if len(w.Shape) != 4 || len(x.Shape) != 4 {
		return fmt.Errorf("nn: cuda Conv2dPadInto: weight %v, input %v", w.Shape, x.Shape)
	}
	var cols *GPUTensor
	ic, kh, kw := w.Shape[1], w.Shape[2], w.Shape[3]
	direct := kh == 1 && kw == 1 && max(stride, 1) == 1 && pad == ConvPad{}
	if !direct && !g.implicitConv(x, direct) {
		oh, ow := pad.OutSize(x.Shape[2], x.Shape[3], kh, kw, stride)
		if oh <= 0 || ow <= 0 {
			return fmt.Errorf("nn: cuda Conv2dPadInto: %dx%d kernel, padding %+v on input %v", kh, kw, pad, x.Shape)
		}
		var err error
		if cols, err = g.EmptyOf(x.DType, ic*kh*kw, oh*ow); err != nil { // [in*kh*kw, H'*W']
			return err
		}
		defer cols.Free()
	}
	return g.conv2dPad(y, cols, x, w, bias, stride, pad, 0)
}

// conv2dPad is every GPU convolution: y = beta y + conv(x) (+ bias), with
// cols [in*kh*kw, H'*W'] the im2col scratch (nil for a 1x1, stride-1,
// unpadded convolution, a plain GEMM, and for the implicit GEMM).
func (g *GPU) conv2dPad(y, cols, x, w, bias *GPUTensor, stride int, pad ConvPad, beta float32) error {
	if len(w.Shape) != 4 || len(x.Shape) != 4 || x.Shape[1] != w.Shape[1] {
		return fmt.Errorf("nn: cuda Conv2d: weight %v does not fit input %v", w.Shape, x.Shape)
	}
	if pad.Top < 0 || pad.Left < 0 || pad.Bottom < 0 || pad.Right < 0 {
		return fmt.Errorf("nn: cuda Conv2d: negative padding %+v", pad)
	}
	oc, ic, kh, kw := w.Shape[0], w.Shape[1], w.Shape[2], w.Shape[3]
	dt, err := opDType("Conv2d", y, cols, x, w, bias)
	if err != nil {
		return err
	}
	b, h, wd := x.Shape[0], x.Shape[2], x.Shape[3]
	s := max(stride, 1)
	oh, ow := pad.OutSize(h, wd, kh, kw, s)
	opix, kdim := oh*ow, ic*kh*kw
	if oh <= 0 || ow <= 0 || y.Numel() != b*oc*opix {
		return fmt.Errorf("nn: cuda Conv2d: output %v, want [%d %d %d %d]", y.Shape, b, oc, oh, ow)
	}
	if bias != nil && bias.Numel() != oc {
		return fmt.Errorf("nn: cuda Conv2d: bias %v for %d output channels", bias.Shape, oc)
	}
	direct := kh == 1 && kw == 1 && s == 1 && pad == ConvPad{}
	if g.implicitConv(x, direct) {
		grid := cuda.Dim3{X: uint32((opix + 63) / 64), Y: uint32((oc + 63) / 64), Z: uint32(b)}
		return g.launchBlock("conv.cu", "conv_igemm_f16", grid, cuda.Dim3{X: 128}, 0, x.Buf, w.Buf, bufOf(bias), y.Buf,
			ic, h, wd, oc, kh, kw, s, pad.Top, pad.Left, oh, ow, beta)
	}
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
			if err := g.launch("conv.cu", dt.kernel("im2col"), gridFor(kdim*opix), xn, cols.Buf, ic, h, wd, kh, kw, s, pad.Top, pad.Left, oh, ow); err != nil {
				return err
			}
			src = cols.Buf
		}
		// y_n [out, H'*W'] = w [out, in*kh*kw] cols [in*kh*kw, H'*W'] + beta y_n
		if err := g.gemm("Conv2d", dt, false, false, oc, opix, kdim, 1, w.Buf, kdim, src, opix, beta, yn, opix); err != nil {
			return err
		}
	}
	if bias != nil {
		n := y.Numel()
		return g.launch("elementwise.cu", dt.kernel("add_channel_bias"), gridFor(n), y.Buf, bias.Buf, oc, int64(opix), int64(n))
	}
	return nil
}
