// gemm.go: single-precision GEMM. Gemm uses OpenBLAS (loaded at run time;
// blas.go says when it is chosen) for products big enough to amortise the
// call, else the Go packed kernel below: op(B) is packed into NR-wide
// column panels per (KC x NC) block, op(A) is read in place by the kernel
// when it is untransposed with alpha 1 and packed into MR-high row panels
// otherwise, and a register-blocked micro-kernel (Go assembly on amd64
// where the CPU has AVX-512 or AVX2+FMA, portable Go otherwise) computes
// each MR x NR tile. Large products are split over all cores by rows (or
// columns when C is wide); a few rows times a wide B^T run as C^T = B A^T.
// It does not handle column-major storage or complex types, and it does
// not check slice lengths beyond Go's bounds checks. OpenBLAS calls are
// made one at a time with OpenBLAS's own threads; work that runs many
// products in parallel uses gemmSerial (Go only).
package nn

//go:generate go run ./internal/gengemm

import (
	"sync"
)

// Gemm computes C = alpha*op(A)*op(B) + beta*C for row-major matrices.
// op(A) is [m, k], op(B) is [k, n], C is [m, n]; lda/ldb/ldc are row strides.
func Gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m > 0 && n > 0 && k > 0 && alpha != 0 && m*n*k >= blasMinWork && blasOK() {
		blasSgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	GemmGo(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// blasMinWork is the m*n*k below which the Go kernel beats a foreign call.
const blasMinWork = 16 * 16 * 16

// GemmGo is Gemm on the pure-Go backend regardless of OpenBLAS (same
// contract); it uses all cores for large products.
func GemmGo(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m <= 0 || n <= 0 {
		return
	}
	if k <= 0 || alpha == 0 {
		scaleC(m, n, beta, c, ldc)
		return
	}
	if transB && !transA && m*(workers()*k+n) < n*k/2 {
		gemmSwapped(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	g := gemmArgs{transA: transA, transB: transB, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc}
	g.parallel(m, n, k)
}

// gemmSwapped computes C = alpha*A*B^T + beta*C for few rows of A (a
// Linear layer on a handful of tokens) as C^T = B*A^T: B [n, k] then
// feeds the kernel unpacked and only the small A is transposed, instead
// of packing all of B^T. C^T lands in scratch and is transposed into C.
func gemmSwapped(m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	tp := getScratch(n * m)
	defer putScratch(tp)
	ct := *tp // [n, m]
	g := gemmArgs{transB: true, alpha: alpha, a: b, lda: ldb, b: a, ldb: lda, c: ct, ldc: m}
	g.parallel(n, m, k)
	parallelFor(m, n, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			row := c[i*ldc : i*ldc+n]
			if beta == 0 {
				for j := range row {
					row[j] = ct[j*m+i]
				}
				continue
			}
			for j := range row {
				row[j] = ct[j*m+i] + beta*row[j]
			}
		}
	})
}

// gemmFunc is the Gemm signature.
type gemmFunc func(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int)

// parallel runs the product on all cores: C is cut into one block of rows
// (or of columns, when C is wide) per core, aligned to the register tile.
// Small products run inline.
func (g *gemmArgs) parallel(m, n, k int) {
	mr, nr := kern.mr, kern.nr
	work := m * n * k
	if workers() <= 1 || work < gemmParallelWork {
		g.run(0, m, 0, n, k)
		return
	}
	if m/mr >= n/nr || n < 2*nr {
		tiles := (m + mr - 1) / mr
		parallelFor(tiles, work/tiles, func(lo, hi int) { g.run(lo*mr, min(hi*mr, m), 0, n, k) })
		return
	}
	tiles := (n + nr - 1) / nr
	parallelFor(tiles, work/tiles, func(lo, hi int) { g.run(0, m, lo*nr, min(hi*nr, n), k) })
}

// gemmSerial is the Go kernel on the calling goroutine only, for kernels
// that already run in parallel over independent products. It never calls
// OpenBLAS, whose calls are threaded themselves and would contend.
func gemmSerial(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m <= 0 || n <= 0 {
		return
	}
	if k <= 0 || alpha == 0 {
		scaleC(m, n, beta, c, ldc)
		return
	}
	g := gemmArgs{transA: transA, transB: transB, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc}
	g.run(0, m, 0, n, k)
}

// gemmParallelWork is the m*n*k below which a product stays on one core.
const gemmParallelWork = 64 * 64 * 64

type gemmArgs struct {
	transA, transB bool
	alpha          float32
	a              []float32
	lda            int
	b              []float32
	ldb            int
	beta           float32
	c              []float32
	ldc            int
	// conv, when not nil, replaces op(B) by the implicit im2col matrix
	// of one image (see conv.go); b and transB are then unused.
	conv *convSrc
}

// Block sizes (in elements): KC deep slices of k, MC rows of A and NC
// columns of B per packed block. MC must be a multiple of every kernel's
// MR and NC of every NR. Variables only so a benchmark can sweep them.
var (
	gemmKC = 192
	gemmMC = 96
	gemmNC = 2048
	// gemmDirectAMaxN is the widest block of C whose A is read in place
	// rather than packed. Measured (Xeon, AVX-512): reading in place was
	// as fast or faster at every SD shape tried, up to 1024^3, so it is
	// unlimited; the variable lets a benchmark compare.
	gemmDirectAMaxN = 1 << 30
)

type packBufs struct{ a, b, tile []float32 }

var packPool = sync.Pool{New: func() any { return new(packBufs) }}

// run computes rows [i0, i1) and columns [j0, j1) of C serially.
func (g *gemmArgs) run(i0, i1, j0, j1, k int) {
	mr, nr := kern.mr, kern.nr
	bufs := packPool.Get().(*packBufs)
	defer packPool.Put(bufs)
	mcMax := min(gemmMC, roundUp(i1-i0, mr))
	ncMax := min(gemmNC, roundUp(j1-j0, nr))
	kcMax := min(gemmKC, k)
	if cap(bufs.a) < mcMax*kcMax {
		bufs.a = make([]float32, mcMax*kcMax)
	}
	if cap(bufs.b) < ncMax*kcMax {
		bufs.b = make([]float32, ncMax*kcMax)
	}
	if cap(bufs.tile) < mr*nr {
		bufs.tile = make([]float32, mr*nr)
	}
	pa, pb, tile := bufs.a[:mcMax*kcMax], bufs.b[:ncMax*kcMax], bufs.tile[:mr*nr]
	if g.beta != 0 && g.beta != 1 {
		for i := i0; i < i1; i++ {
			row := g.c[i*g.ldc+j0 : i*g.ldc+j1]
			for j := range row {
				row[j] *= g.beta
			}
		}
	}
	// Packing A is a scalar transpose costing as much as dozens of vector
	// FMAs per element: let the kernel read A in place when it can (no
	// transpose, alpha 1).
	directA := kern.fnA != nil && !g.transA && g.alpha == 1 && j1-j0 <= gemmDirectAMaxN
	for jc := j0; jc < j1; jc += gemmNC {
		nc := min(gemmNC, j1-jc)
		for pc := 0; pc < k; pc += gemmKC {
			kc := min(gemmKC, k-pc)
			g.packB(pb, pc, kc, jc, nc, nr)
			load := pc > 0 || g.beta != 0
			for ic := i0; ic < i1; ic += gemmMC {
				mc := min(gemmMC, i1-ic)
				full := mc / mr * mr // rows in whole MR panels
				if !directA {
					g.packA(pa, ic, mc, pc, kc, mr)
				} else if full < mc {
					g.packA(pa[full*kc:], ic+full, mc-full, pc, kc, mr)
				}
				for jr := 0; jr < nc; jr += nr {
					nrr := min(nr, nc-jr)
					w, fn, fnA := kern.panel(nrr)
					bp := pb[jr*kc : jr*kc+w*kc]
					for ir := 0; ir < mc; ir += mr {
						mrr := min(mr, mc-ir)
						ci := (ic+ir)*g.ldc + jc + jr
						dst, ldc, ld := g.c[ci:], g.ldc, load
						if mrr < mr || nrr < w {
							dst, ldc, ld = tile, w, false
						}
						if directA && mrr == mr {
							fnA(kc, g.a[(ic+ir)*g.lda+pc:], g.lda, bp, dst, ldc, ld)
						} else {
							fn(kc, pa[ir*kc:ir*kc+mr*kc], bp, dst, ldc, ld)
						}
						if mrr == mr && nrr == w {
							continue
						}
						for i := 0; i < mrr; i++ {
							cr := g.c[ci+i*g.ldc : ci+i*g.ldc+nrr]
							src := tile[i*w : i*w+nrr]
							if load {
								for j, v := range src {
									cr[j] += v
								}
							} else {
								copy(cr, src)
							}
						}
					}
				}
			}
		}
	}
}

// scaleC does C *= beta (C = 0 when beta is 0, so NaNs in C do not leak).
func scaleC(m, n int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row)
			continue
		}
		if beta != 1 {
			for j := range row {
				row[j] *= beta
			}
		}
	}
}

func roundUp(x, m int) int { return (x + m - 1) / m * m }

// packA packs rows [ic, ic+mc) x depth [pc, pc+kc) of alpha*op(A) into
// MR-row panels: panel p holds, for each depth l, MR consecutive values.
func (g *gemmArgs) packA(dst []float32, ic, mc, pc, kc, mr int) {
	alpha := g.alpha
	for ir := 0; ir < mc; ir += mr {
		mrr := min(mr, mc-ir)
		panel := dst[ir*kc : ir*kc+mr*kc]
		if mrr < mr {
			clear(panel)
		}
		if !g.transA {
			scatterPanel(panel, mr, g.a[(ic+ir)*g.lda+pc:], g.lda, mrr, kc, alpha)
			continue
		}
		for l := 0; l < kc; l++ {
			src := g.a[(pc+l)*g.lda+ic+ir : (pc+l)*g.lda+ic+ir+mrr]
			out := panel[l*mr : l*mr+mrr]
			for i, v := range src {
				out[i] = alpha * v
			}
		}
	}
}

// packB packs depth [pc, pc+kc) x columns [jc, jc+nc) of op(B) into
// NR-column panels: panel p holds, for each depth l, NR consecutive values.
func (g *gemmArgs) packB(dst []float32, pc, kc, jc, nc, nr int) {
	for jr := 0; jr < nc; jr += nr {
		nrr := min(nr, nc-jr)
		w, _, _ := kern.panel(nrr)
		panel := dst[jr*kc : jr*kc+w*kc]
		if nrr < w {
			clear(panel)
		}
		if g.conv != nil {
			g.conv.pack(panel, w, pc, kc, jc+jr, nrr)
			continue
		}
		if !g.transB {
			for l := 0; l < kc; l++ {
				copy(panel[l*w:l*w+nrr], g.b[(pc+l)*g.ldb+jc+jr:(pc+l)*g.ldb+jc+jr+nrr])
			}
			continue
		}
		src := g.b[(jc+jr)*g.ldb+pc:]
		if nrr == w && packTransposed(panel, w, src, g.ldb, kc) {
			continue
		}
		scatterPanel(panel, w, src, g.ldb, nrr, kc, 1)
	}
}

// scatterPanel transposes rows src[i*ld : i*ld+kc] (i < rows) into
// panel[l*w+i], times alpha. It walks k in short strips so the part of
// the panel being written stays in L1.
func scatterPanel(panel []float32, w int, src []float32, ld, rows, kc int, alpha float32) {
	const strip = 16
	for l0 := 0; l0 < kc; l0 += strip {
		l1 := min(l0+strip, kc)
		out := panel[l0*w : l1*w]
		for i := 0; i < rows; i++ {
			row := src[i*ld+l0 : i*ld+l1]
			if alpha == 1 {
				for t, v := range row {
					out[t*w+i] = v
				}
			} else {
				for t, v := range row {
					out[t*w+i] = alpha * v
				}
			}
		}
	}
}

// microKernel computes the MR x NR tile c (row stride ldc) as
// sum over l of a[l*MR+i]*b[l*NR+j], added to c when load, else stored.
type microKernel struct {
	mr, nr int
	name   string
	simd   bool // assembly kernel (the default backend where available)
	fn     func(k int, a, b, c []float32, ldc int, load bool)
	// fnA, when not nil, is the same kernel reading A unpacked: row i of
	// the tile is a[i*lda : i*lda+k].
	fnA func(k int, a []float32, lda int, b, c []float32, ldc int, load bool)
	// fnHalf and fnHalfA, when not nil, are MR x NR/2 kernels for a last
	// B panel at most NR/2 wide (packed NR/2 wide).
	fnHalf  func(k int, a, b, c []float32, ldc int, load bool)
	fnHalfA func(k int, a []float32, lda int, b, c []float32, ldc int, load bool)
}

// panel returns the packed width and kernels for a B panel with nrr
// useful columns.
func (mk *microKernel) panel(nrr int) (int, func(int, []float32, []float32, []float32, int, bool), func(int, []float32, int, []float32, []float32, int, bool)) {
	if nrr <= mk.nr/2 && mk.fnHalf != nil {
		return mk.nr / 2, mk.fnHalf, mk.fnHalfA
	}
	return mk.nr, mk.fn, mk.fnA
}

// kern is the micro-kernel in use, chosen once from the CPU's features.
var kern = pickKernel()

// goKernel4x8 is the portable micro-kernel: a 4x8 tile in 32 scalar
// accumulators (the compiler keeps most in registers).
func goKernel4x8(k int, a, b, c []float32, ldc int, load bool) {
	var c00, c01, c02, c03, c04, c05, c06, c07 float32
	var c10, c11, c12, c13, c14, c15, c16, c17 float32
	var c20, c21, c22, c23, c24, c25, c26, c27 float32
	var c30, c31, c32, c33, c34, c35, c36, c37 float32
	a = a[:4*k]
	b = b[:8*k]
	for len(a) >= 4 && len(b) >= 8 {
		av, bv := a[:4:4], b[:8:8]
		a, b = a[4:], b[8:]
		b0, b1, b2, b3, b4, b5, b6, b7 := bv[0], bv[1], bv[2], bv[3], bv[4], bv[5], bv[6], bv[7]
		a0 := av[0]
		c00 += a0 * b0
		c01 += a0 * b1
		c02 += a0 * b2
		c03 += a0 * b3
		c04 += a0 * b4
		c05 += a0 * b5
		c06 += a0 * b6
		c07 += a0 * b7
		a1 := av[1]
		c10 += a1 * b0
		c11 += a1 * b1
		c12 += a1 * b2
		c13 += a1 * b3
		c14 += a1 * b4
		c15 += a1 * b5
		c16 += a1 * b6
		c17 += a1 * b7
		a2 := av[2]
		c20 += a2 * b0
		c21 += a2 * b1
		c22 += a2 * b2
		c23 += a2 * b3
		c24 += a2 * b4
		c25 += a2 * b5
		c26 += a2 * b6
		c27 += a2 * b7
		a3 := av[3]
		c30 += a3 * b0
		c31 += a3 * b1
		c32 += a3 * b2
		c33 += a3 * b3
		c34 += a3 * b4
		c35 += a3 * b5
		c36 += a3 * b6
		c37 += a3 * b7
	}
	rows := [4][8]float32{
		{c00, c01, c02, c03, c04, c05, c06, c07},
		{c10, c11, c12, c13, c14, c15, c16, c17},
		{c20, c21, c22, c23, c24, c25, c26, c27},
		{c30, c31, c32, c33, c34, c35, c36, c37},
	}
	for i := range rows {
		dst := c[i*ldc : i*ldc+8 : i*ldc+8]
		if load {
			for j, v := range rows[i] {
				dst[j] += v
			}
		} else {
			copy(dst, rows[i][:])
		}
	}
}

// goKernel4x4 is the smaller portable micro-kernel (16 accumulators, so
// it fits CPUs with 16 float registers without spilling).
func goKernel4x4(k int, a, b, c []float32, ldc int, load bool) {
	var c00, c01, c02, c03, c10, c11, c12, c13 float32
	var c20, c21, c22, c23, c30, c31, c32, c33 float32
	a = a[:4*k]
	b = b[:4*k]
	for len(a) >= 4 && len(b) >= 4 {
		av, bv := a[:4:4], b[:4:4]
		a, b = a[4:], b[4:]
		b0, b1, b2, b3 := bv[0], bv[1], bv[2], bv[3]
		a0, a1, a2, a3 := av[0], av[1], av[2], av[3]
		c00 += a0 * b0
		c01 += a0 * b1
		c02 += a0 * b2
		c03 += a0 * b3
		c10 += a1 * b0
		c11 += a1 * b1
		c12 += a1 * b2
		c13 += a1 * b3
		c20 += a2 * b0
		c21 += a2 * b1
		c22 += a2 * b2
		c23 += a2 * b3
		c30 += a3 * b0
		c31 += a3 * b1
		c32 += a3 * b2
		c33 += a3 * b3
	}
	rows := [4][4]float32{
		{c00, c01, c02, c03},
		{c10, c11, c12, c13},
		{c20, c21, c22, c23},
		{c30, c31, c32, c33},
	}
	for i := range rows {
		dst := c[i*ldc : i*ldc+4 : i*ldc+4]
		if load {
			for j, v := range rows[i] {
				dst[j] += v
			}
		} else {
			copy(dst, rows[i][:])
		}
	}
}
