// conv.go: 2-D convolution as GEMM. A 1x1 stride-1 unpadded convolution is
// a direct GEMM over the channel axis. Otherwise, on the Go backend the
// GEMM packs its B panels straight from the image (implicit im2col, no
// column buffer); with OpenBLAS, im2col runs in chunks of output pixels
// (bounded scratch, so a 512x512 VAE layer does not allocate gigabytes)
// followed by a GEMM into the strided output. The
// bias is pre-filled into the output. It does not do dilation, groups or
// Winograd/FFT transforms.
package nn

// Conv2d is a 2-D convolution. Weight [out, in, kh, kw], Bias [out] or nil.
type Conv2d struct {
	Weight  *Tensor
	Bias    *Tensor
	Stride  int
	Padding int
}

// convColsBudget bounds the im2col scratch (in float32s) per chunk.
var convColsBudget = 4 << 20 // a variable so tests can force chunking

// Forward maps x [B, in, H, W] to [B, out, H', W'].
func (c *Conv2d) Forward(x *Tensor) *Tensor {
	oc, ic, kh, kw := c.Weight.Shape[0], c.Weight.Shape[1], c.Weight.Shape[2], c.Weight.Shape[3]
	b, h, w := x.Shape[0], x.Shape[2], x.Shape[3]
	s, p := max(c.Stride, 1), c.Padding
	oh, ow := (h+2*p-kh)/s+1, (w+2*p-kw)/s+1
	y := New(b, oc, oh, ow) // [B, out, H', W']
	opix := oh * ow
	beta := float32(0)
	if c.Bias != nil {
		AddChannelBias(y, c.Bias.Data[:oc])
		beta = 1
	}
	kdim := ic * kh * kw
	wd := c.Weight.Data[:oc*kdim] // [out, in*kh*kw]
	if kh == 1 && kw == 1 && s == 1 && p == 0 {
		for n := 0; n < b; n++ {
			xn := x.Data[n*ic*h*w : (n+1)*ic*h*w]   // [in, H*W]
			yn := y.Data[n*oc*opix : (n+1)*oc*opix] // [out, H*W]
			Gemm(false, false, oc, opix, ic, 1, wd, ic, xn, opix, beta, yn, opix)
		}
		return y
	}
	if !blasOK() {
		// Implicit GEMM: B panels are packed straight from the image.
		for n := 0; n < b; n++ {
			g := gemmArgs{alpha: 1, a: wd, lda: kdim, beta: beta, c: y.Data[n*oc*opix : (n+1)*oc*opix], ldc: opix,
				conv: &convSrc{x: x.Data[n*ic*h*w : (n+1)*ic*h*w], ic: ic, h: h, w: w, kh: kh, kw: kw, s: s, pad: p, ow: ow}}
			g.parallel(oc, opix, kdim)
		}
		return y
	}
	chunk := max(min(opix, convColsBudget/kdim), 1)
	cp := getScratch(kdim * chunk)
	defer putScratch(cp)
	cols := *cp // [in*kh*kw, chunk]
	for n := 0; n < b; n++ {
		xn := x.Data[n*ic*h*w : (n+1)*ic*h*w]
		yn := y.Data[n*oc*opix : (n+1)*oc*opix]
		for p0 := 0; p0 < opix; p0 += chunk {
			np := min(chunk, opix-p0)
			im2col(cols[:kdim*np], xn, ic, h, w, kh, kw, s, p, ow, p0, np)
			Gemm(false, false, oc, np, kdim, 1, wd, kdim, cols, np, beta, yn[p0:], opix)
		}
	}
	return y
}

// convSrc describes one image as the implicit im2col matrix
// [in*kh*kw, H'*W'] so the GEMM can pack its B panels straight from the
// image (no column buffer).
type convSrc struct {
	x                            []float32 // [in, H, W]
	ic, h, w, kh, kw, s, pad, ow int
}

// pack writes rows [pc, pc+kc) x pixels [p0, p0+np) of the im2col matrix
// into panel[l*width+j].
func (cs *convSrc) pack(panel []float32, width, pc, kc, p0, np int) {
	for l := 0; l < kc; l++ {
		r := pc + l
		ci, ky, kx := r/(cs.kh*cs.kw), r/cs.kw%cs.kh, r%cs.kw
		patchRow(panel[l*width:l*width+np], cs.x[ci*cs.h*cs.w:(ci+1)*cs.h*cs.w], cs.h, cs.w, ky, kx, cs.s, cs.pad, cs.ow, p0)
	}
}

// im2col fills cols [ic*kh*kw, np] with the input patches for output
// pixels [p0, p0+np) (row-major over the output grid of width ow).
func im2col(cols, x []float32, ic, h, w, kh, kw, s, pad, ow, p0, np int) {
	rows := ic * kh * kw
	parallelFor(rows, np, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			ci, ky, kx := r/(kh*kw), r/kw%kh, r%kw
			patchRow(cols[r*np:(r+1)*np], x[ci*h*w:(ci+1)*h*w], h, w, ky, kx, s, pad, ow, p0)
		}
	})
}

// patchRow fills dst with input plane values at kernel offset (ky, kx)
// for output pixels p0, p0+1, ... (zeros where the window hangs over the
// padding).
func patchRow(dst, plane []float32, h, w, ky, kx, s, pad, ow, p0 int) {
	np := len(dst)
	for q := 0; q < np; {
		oy, ox := (p0+q)/ow, (p0+q)%ow
		run := min(ow-ox, np-q) // pixels left on this output row
		seg := dst[q : q+run]
		q += run
		iy := oy*s - pad + ky
		if iy < 0 || iy >= h {
			clear(seg)
			continue
		}
		src := plane[iy*w : (iy+1)*w]
		ix := ox*s - pad + kx
		if s == 1 {
			// valid part of the run: t in [max(0, -ix), min(run, w-ix))
			a, z := min(max(0, -ix), run), min(run, w-ix)
			z = max(z, a)
			clear(seg[:a])
			copy(seg[a:z], src[ix+a:ix+z])
			clear(seg[z:])
			continue
		}
		for t := range seg {
			if xx := ix + t*s; xx >= 0 && xx < w {
				seg[t] = src[xx]
			} else {
				seg[t] = 0
			}
		}
	}
}
