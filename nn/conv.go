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
	mustf(len(x.Shape) == 4 && x.Shape[1] == ic, "Conv2d", "input %v, weight %v", x.Shape, c.Weight.Shape)
	b, h, w := x.Shape[0], x.Shape[2], x.Shape[3]
	s, p := max(c.Stride, 1), c.Padding
	oh, ow := (h+2*p-kh)/s+1, (w+2*p-kw)/s+1
	mustf(oh > 0 && ow > 0 && p >= 0, "Conv2d", "input %v too small for weight %v, padding %d", x.Shape, c.Weight.Shape, p)
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
// into panel[l*width+j]. The pixel range is cut into output-row runs once,
// and (ci, ky, kx) advance incrementally, so the per-row work is copies.
func (cs *convSrc) pack(panel []float32, width, pc, kc, p0, np int) {
	var buf [16]pixelRun
	runs := pixelRuns(buf[:0], p0, np, cs.ow)
	plane := cs.h * cs.w
	ci, ky, kx := pc/(cs.kh*cs.kw), pc/cs.kw%cs.kh, pc%cs.kw
	for l := 0; l < kc; l++ {
		dst := panel[l*width : l*width+np]
		src := cs.x[ci*plane : (ci+1)*plane]
		for _, r := range runs {
			seg := dst[r.q : r.q+r.n]
			iy := r.oy*cs.s - cs.pad + ky
			if iy < 0 || iy >= cs.h {
				clear(seg)
				continue
			}
			fillRun(seg, src[iy*cs.w:(iy+1)*cs.w], r.ox*cs.s-cs.pad+kx, cs.s)
		}
		if kx++; kx == cs.kw {
			kx = 0
			if ky++; ky == cs.kh {
				ky = 0
				ci++
			}
		}
	}
}

// pixelRun is a stretch of consecutive output pixels on one output row:
// dst[q : q+n] are pixels (oy, ox), (oy, ox+1), ...
type pixelRun struct{ q, n, oy, ox int }

// pixelRuns cuts output pixels [p0, p0+np) into runs along output rows.
func pixelRuns(runs []pixelRun, p0, np, ow int) []pixelRun {
	for q := 0; q < np; {
		oy, ox := (p0+q)/ow, (p0+q)%ow
		n := min(ow-ox, np-q)
		runs = append(runs, pixelRun{q, n, oy, ox})
		q += n
	}
	return runs
}

// fillRun sets seg[t] = src[ix+t*s] where that index is inside src, else 0
// (the padding).
func fillRun(seg, src []float32, ix, s int) {
	run := len(seg)
	if s == 1 {
		// valid part of the run: t in [max(0, -ix), min(run, w-ix))
		a, z := min(max(0, -ix), run), min(run, len(src)-ix)
		if z <= a { // the run lies wholly in the padding
			clear(seg)
			return
		}
		clear(seg[:a])
		copy(seg[a:z], src[ix+a:ix+z])
		clear(seg[z:])
		return
	}
	for t := range seg {
		if xx := ix + t*s; xx >= 0 && xx < len(src) {
			seg[t] = src[xx]
		} else {
			seg[t] = 0
		}
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
	var buf [16]pixelRun
	for _, r := range pixelRuns(buf[:0], p0, len(dst), ow) {
		seg := dst[r.q : r.q+r.n]
		iy := r.oy*s - pad + ky
		if iy < 0 || iy >= h {
			clear(seg)
			continue
		}
		fillRun(seg, plane[iy*w:(iy+1)*w], r.ox*s-pad+kx, s)
	}
}
