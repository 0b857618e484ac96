// gemm.go: single-precision GEMM. Gemm picks OpenBLAS (loaded at run time,
// see blas.go) when present and the product is big enough to amortise the
// call, else the pure-Go packed kernel below: op(B) is packed into NR-wide
// column panels and op(A) into MR-high row panels per (KC x NC) / (MC x KC)
// block, and a register-blocked micro-kernel (assembly on amd64 where the
// CPU has AVX-512 or AVX2+FMA, portable Go otherwise) computes each MR x NR
// tile. Large products are split over all cores by rows (or columns when
// the matrix is wide). It does not handle column-major storage or complex
// types, and it does not check that slices are long enough beyond Go's own
// bounds checks.
package nn

import (
	"sync"
)

// Gemm computes C = alpha*op(A)*op(B) + beta*C for row-major matrices.
// op(A) is [m, k], op(B) is [k, n], C is [m, n]; lda/ldb/ldc are row strides.
func Gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if blasOK() && m*n*k >= blasMinWork {
		gemmSplit(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, 16, 16, blasSgemm)
		return
	}
	GemmGo(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// blasMinWork is the m*n*k below which the Go kernel beats a foreign call.
const blasMinWork = 16 * 16 * 16

// GemmGo is Gemm on the pure-Go backend regardless of OpenBLAS (same
// contract); it uses all cores for large products.
func GemmGo(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	gemmSplit(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, kern.mr, kern.nr, goGemmSerial)
}

// gemmFunc is the Gemm signature, shared by the serial backends.
type gemmFunc func(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int)

// gemmSplit cuts C into one block of rows (or columns, when C is wide) per
// core, aligned to mr/nr, and runs serial on each block in parallel. Small
// products run inline.
func gemmSplit(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int, mr, nr int, serial gemmFunc) {
	if m <= 0 || n <= 0 {
		return
	}
	if k <= 0 || alpha == 0 {
		scaleC(m, n, beta, c, ldc)
		return
	}
	work := m * n * k
	if workers() <= 1 || work < gemmParallelWork {
		serial(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	if m/mr >= n/nr || n < 2*nr {
		tiles := (m + mr - 1) / mr
		parallelFor(tiles, work/tiles, func(lo, hi int) {
			i0, i1 := lo*mr, min(hi*mr, m)
			ao := i0 * lda
			if transA {
				ao = i0
			}
			serial(transA, transB, i1-i0, n, k, alpha, a[ao:], lda, b, ldb, beta, c[i0*ldc:], ldc)
		})
		return
	}
	tiles := (n + nr - 1) / nr
	parallelFor(tiles, work/tiles, func(lo, hi int) {
		j0, j1 := lo*nr, min(hi*nr, n)
		bo := j0
		if transB {
			bo = j0 * ldb
		}
		serial(transA, transB, m, j1-j0, k, alpha, a, lda, b[bo:], ldb, beta, c[j0:], ldc)
	})
}

// gemmSerial is Gemm on the calling goroutine only, for kernels that
// already run in parallel over independent products (OpenBLAS runs
// single-threaded; see blas.go).
func gemmSerial(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m <= 0 || n <= 0 {
		return
	}
	if k <= 0 || alpha == 0 {
		scaleC(m, n, beta, c, ldc)
		return
	}
	if blasOK() && m*n*k >= blasMinWork {
		blasSgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	goGemmSerial(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// goGemmSerial is the packed Go kernel on one goroutine (m, n > 0).
func goGemmSerial(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if k <= 0 || alpha == 0 {
		scaleC(m, n, beta, c, ldc)
		return
	}
	g := gemmArgs{transA, transB, alpha, a, lda, b, ldb, beta, c, ldc}
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
}

// Block sizes (in elements): KC deep slices of k, MC rows of A and NC
// columns of B per packed block. MC must be a multiple of every kernel's
// MR and NC of every NR. Variables only so a benchmark can sweep them.
var (
	gemmKC = 256
	gemmMC = 192
	gemmNC = 2048
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
	for jc := j0; jc < j1; jc += gemmNC {
		nc := min(gemmNC, j1-jc)
		for pc := 0; pc < k; pc += gemmKC {
			kc := min(gemmKC, k-pc)
			g.packB(pb, pc, kc, jc, nc, nr)
			load := pc > 0 || g.beta != 0
			for ic := i0; ic < i1; ic += gemmMC {
				mc := min(gemmMC, i1-ic)
				g.packA(pa, ic, mc, pc, kc, mr)
				for jr := 0; jr < nc; jr += nr {
					nrr := min(nr, nc-jr)
					bp := pb[jr*kc : jr*kc+nr*kc]
					for ir := 0; ir < mc; ir += mr {
						mrr := min(mr, mc-ir)
						ap := pa[ir*kc : ir*kc+mr*kc]
						ci := (ic+ir)*g.ldc + jc + jr
						if mrr == mr && nrr == nr {
							kern.fn(kc, ap, bp, g.c[ci:], g.ldc, load)
							continue
						}
						kern.fn(kc, ap, bp, tile, nr, false)
						for i := 0; i < mrr; i++ {
							dst := g.c[ci+i*g.ldc : ci+i*g.ldc+nrr]
							src := tile[i*nr : i*nr+nrr]
							if load {
								for j, v := range src {
									dst[j] += v
								}
							} else {
								copy(dst, src)
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
			for i := 0; i < mrr; i++ {
				src := g.a[(ic+ir+i)*g.lda+pc : (ic+ir+i)*g.lda+pc+kc]
				for l, v := range src {
					panel[l*mr+i] = alpha * v
				}
			}
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
		panel := dst[jr*kc : jr*kc+nr*kc]
		if nrr < nr {
			clear(panel)
		}
		if !g.transB {
			for l := 0; l < kc; l++ {
				copy(panel[l*nr:l*nr+nrr], g.b[(pc+l)*g.ldb+jc+jr:(pc+l)*g.ldb+jc+jr+nrr])
			}
			continue
		}
		for j := 0; j < nrr; j++ {
			src := g.b[(jc+jr+j)*g.ldb+pc : (jc+jr+j)*g.ldb+pc+kc]
			for l, v := range src {
				panel[l*nr+j] = v
			}
		}
	}
}

// microKernel computes the MR x NR tile c (row stride ldc) as
// sum over l of a[l*MR+i]*b[l*NR+j], added to c when load, else stored.
type microKernel struct {
	mr, nr int
	name   string
	fn     func(k int, a, b, c []float32, ldc int, load bool)
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
