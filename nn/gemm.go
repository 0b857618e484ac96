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
	g := gemmArgs{transA, transB, alpha, a, lda, b, ldb, beta, c, ldc}
	p := workers()
	work := m * n * k
	if p <= 1 || work < gemmParallelWork {
		g.run(0, m, 0, n, k)
		return
	}
	mr, nr := kern.mr, kern.nr
	// Split the longer side into p chunks aligned to the register tile.
	if m/mr >= n/nr || n < 2*nr {
		tiles := (m + mr - 1) / mr
		parallelFor(tiles, work/tiles, func(lo, hi int) {
			g.run(lo*mr, min(hi*mr, m), 0, n, k)
		})
	} else {
		tiles := (n + nr - 1) / nr
		parallelFor(tiles, work/tiles, func(lo, hi int) {
			g.run(0, m, lo*nr, min(hi*nr, n), k)
		})
	}
}

// gemmSerial is GemmGo on the calling goroutine only (for kernels that
// already run in parallel over independent products).
func gemmSerial(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m <= 0 || n <= 0 {
		return
	}
	if k <= 0 || alpha == 0 {
		scaleC(m, n, beta, c, ldc)
		return
	}
	g := gemmArgs{transA, transB, alpha, a, lda, b, ldb, beta, c, ldc}
	g.run(0, m, 0, n, k)
}

// gemmParallelWork is the m*n*k below which GemmGo stays on one core.
const gemmParallelWork = 64 * 64 * 64

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
// columns of B per packed block.
const (
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
	for l := 0; l < k; l++ {
		av := a[l*4 : l*4+4 : l*4+4]
		bv := b[l*8 : l*8+8 : l*8+8]
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
