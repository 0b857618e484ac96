// Command gengemm writes nn's GEMM micro-kernel assembly: the files
// gemm_avx512_amd64.s (12x32), gemm_avx512half_amd64.s (12x16) and
// gemm_avx2_amd64.s (6x16), each with a packed-A kernel and a DirectA
// kernel that reads A unpacked. Run it from nn with `go generate` (the
// directive is in nn/gemm.go) or `go run ./internal/gengemm [-o dir]`;
// nn's TestGeneratedAssemblyUpToDate checks the committed files match.
// It does not write the Go declarations or wrappers
// (gemm_kernel_amd64.go), the hand-written .s files (gelu, vec, pack), or
// choose kernels at run time; it only prints instructions.
package main

import (
	"flag"
	"fmt"
	"log"
	"math/bits"
	"os"
	"path/filepath"
	"strings"
)

// kernelSpec describes one MR x NR micro-kernel: NR = nrv vectors of vw
// float32 lanes in registers named reg+N.
type kernelSpec struct {
	name   string
	mr     int    // rows of the tile
	nrv    int    // vectors per tile row
	vw     int    // float32 lanes per vector (16 for Z, 8 for Y)
	reg    string // register prefix: "Z" or "Y"
	bregs  []int  // register numbers holding the B vectors of one k step
	bcregs []int  // register numbers the A broadcasts rotate through
	unroll int    // k steps per main-loop iteration (a power of two)
	direct bool   // read A unpacked with row stride lda
}

// fileSpec is one generated .s file.
type fileSpec struct {
	name    string
	title   string // first header line
	extra   string // more header comment lines, each ending in "\n"
	kernels []kernelSpec
}

var (
	avx512BC = []int{26, 27, 28, 29, 30, 31}
	avx2BC   = []int{14, 15}
)

var files = []fileSpec{
	{
		name:  "gemm_avx512_amd64.s",
		title: "gemm_avx512_amd64.s: the AVX-512 12x32 GEMM micro-kernels (Go assembly).",
		kernels: []kernelSpec{
			{"sgemmKernel12x32AVX512", 12, 2, 16, "Z", []int{24, 25}, avx512BC, 2, false},
			{"sgemmKernel12x32AVX512DirectA", 12, 2, 16, "Z", []int{24, 25}, avx512BC, 2, true},
		},
	},
	{
		name:  "gemm_avx512half_amd64.s",
		title: "gemm_avx512half_amd64.s: AVX-512 12x16 GEMM micro-kernels (Go assembly).",
		extra: "// They serve a last B panel at most 16 wide (attention with head size 40,\n" +
			"// say) so half the FMAs are not spent on zero padding.\n",
		kernels: []kernelSpec{
			{"sgemmKernel12x16AVX512", 12, 1, 16, "Z", []int{24}, avx512BC, 2, false},
			{"sgemmKernel12x16AVX512DirectA", 12, 1, 16, "Z", []int{24}, avx512BC, 2, true},
		},
	},
	{
		name:  "gemm_avx2_amd64.s",
		title: "gemm_avx2_amd64.s: the AVX2+FMA 6x16 GEMM micro-kernels (Go assembly).",
		kernels: []kernelSpec{
			{"sgemmKernel6x16AVX2", 6, 2, 8, "Y", []int{12, 13}, avx2BC, 2, false},
			{"sgemmKernel6x16AVX2DirectA", 6, 2, 8, "Y", []int{12, 13}, avx2BC, 2, true},
		},
	},
}

const headerBody = "// Each kernel computes one MR x NR tile of C from packed panels (a: k\n" +
	"// groups of MR values, b: k groups of NR values), accumulating in\n" +
	"// registers, then stores the tile or adds it to C (load != 0); ldc is in\n" +
	"// elements. The k loop runs two steps per iteration plus a one-step tail,\n" +
	"// with the C rows prefetched up front. Packing, edges and alpha/beta live\n" +
	"// in gemm.go; this file has no logic beyond the tile. Row i of the tile\n" +
	"// lives in accumulators [i*NRV, (i+1)*NRV) (NRV vectors per row); B\n" +
	"// vectors and A broadcasts use the registers above them. The DirectA\n" +
	"// variants read A unpacked (row-major, row stride lda) through base\n" +
	"// registers SI, R11, R12, R13 three rows apart, for products too narrow\n" +
	"// to repay packing A.\n"

// directBases are the A row base registers of the DirectA kernels; base
// b points at row 3*b, and rows 3b+1, 3b+2 are reached through R9 = lda*4.
var directBases = []string{"SI", "R11", "R12", "R13"}

// render returns the whole text of one file.
func (f fileSpec) render() string {
	var sb strings.Builder
	sb.WriteString("// " + f.title + "\n" + headerBody + f.extra)
	sb.WriteString("\n#include \"textflag.h\"\n\n")
	for i, k := range f.kernels {
		if i > 0 {
			sb.WriteString("\n\n")
		}
		sb.WriteString(k.render())
	}
	sb.WriteString("\n")
	return sb.String()
}

// render returns one kernel's TEXT block, its lines joined by "\n" with
// no trailing newline.
func (k kernelSpec) render() string {
	var lines []string
	e := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }
	vb := k.vw * 4 // bytes per vector
	var loadArg string
	if k.direct {
		e("// func %s(k int, a *float32, lda int, b, c *float32, ldc int, load bool)", k.name)
		e("TEXT ·%s(SB), NOSPLIT, $0-49", k.name)
		e("\tMOVQ k+0(FP), CX")
		e("\tMOVQ a+8(FP), SI")
		e("\tMOVQ lda+16(FP), R9")
		e("\tSHLQ $2, R9")
		e("\tMOVQ b+24(FP), DI")
		e("\tMOVQ c+32(FP), DX")
		e("\tMOVQ ldc+40(FP), R8")
		e("\tSHLQ $2, R8")
		e("\tLEAQ (SI)(R9*2), R11")
		e("\tADDQ R9, R11")
		e("\tLEAQ (R11)(R9*2), R12")
		e("\tADDQ R9, R12")
		e("\tLEAQ (R12)(R9*2), R13")
		e("\tADDQ R9, R13")
		loadArg = "load+48(FP)"
	} else {
		e("// func %s(k int, a, b, c *float32, ldc int, load bool)", k.name)
		e("TEXT ·%s(SB), NOSPLIT, $0-41", k.name)
		e("\tMOVQ k+0(FP), CX")
		e("\tMOVQ a+8(FP), SI")
		e("\tMOVQ b+16(FP), DI")
		e("\tMOVQ c+24(FP), DX")
		e("\tMOVQ ldc+32(FP), R8")
		e("\tSHLQ $2, R8")
		loadArg = "load+40(FP)"
	}
	// aAddr is the operand address of A row i at byte offset off within
	// the current k step.
	aAddr := func(off, i int) string {
		if !k.direct {
			return fmt.Sprintf("%d(SI)", off+i*4)
		}
		base := directBases[i/3]
		if idx := i % 3; idx != 0 {
			return fmt.Sprintf("%d(%s)(R9*%d)", off, base, idx)
		}
		return fmt.Sprintf("%d(%s)", off, base)
	}
	advanceA := func(steps int) {
		if !k.direct {
			e("\tADDQ $%d, SI", steps*k.mr*4)
			return
		}
		for _, b := range directBases[:(k.mr+2)/3] {
			e("\tADDQ $%d, %s", steps*4, b)
		}
	}
	acc := func(i, j int) string { return fmt.Sprintf("%s%d", k.reg, i*k.nrv+j) }
	breg := func(j int) string { return fmt.Sprintf("%s%d", k.reg, k.bregs[j]) }

	// Prefetch the C rows, then zero the accumulators.
	e("\tMOVQ DX, R10")
	for i := range k.mr {
		e("\tPREFETCHT0 (R10)")
		if k.nrv*vb > 64 {
			e("\tPREFETCHT0 %d(R10)", k.nrv*vb-4)
		}
		if i < k.mr-1 {
			e("\tADDQ R8, R10")
		}
	}
	for i := range k.mr * k.nrv {
		r := fmt.Sprintf("%s%d", k.reg, i)
		e("\tVXORPS %s, %s, %s", r, r, r)
	}
	// step emits one k step: load the B vectors, then per A row a
	// broadcast and nrv FMAs.
	step := func(offA, offB int) {
		for j := range k.nrv {
			e("\tVMOVUPS %d(DI), %s", offB+j*vb, breg(j))
		}
		for i := range k.mr {
			bc := fmt.Sprintf("%s%d", k.reg, k.bcregs[i%len(k.bcregs)])
			e("\tVBROADCASTSS %s, %s", aAddr(offA, i), bc)
			for j := range k.nrv {
				e("\tVFMADD231PS %s, %s, %s", breg(j), bc, acc(i, j))
			}
		}
	}
	if k.unroll > 1 {
		e("\tMOVQ CX, R10")
		e("\tSHRQ $%d, R10", bits.Len(uint(k.unroll))-1)
		e("\tJEQ %s_tail", k.name)
		e("%s_loop:", k.name)
		for u := range k.unroll {
			offA := u * k.mr * 4
			if k.direct {
				offA = u * 4
			}
			step(offA, u*k.nrv*vb)
		}
		advanceA(k.unroll)
		e("\tADDQ $%d, DI", k.unroll*k.nrv*vb)
		e("\tDECQ R10")
		e("\tJNE %s_loop", k.name)
		e("%s_tail:", k.name)
		e("\tANDQ $%d, CX", k.unroll-1)
	}
	e("\tJEQ %s_store", k.name)
	e("%s_one:", k.name)
	step(0, 0)
	advanceA(1)
	e("\tADDQ $%d, DI", k.nrv*vb)
	e("\tDECQ CX")
	e("\tJNE %s_one", k.name)

	// storeTile writes the accumulators to C row by row, first adding C's
	// old values when add is set, and returns.
	storeTile := func(add bool) {
		for i := range k.mr {
			for j := range k.nrv {
				r := acc(i, j)
				if add {
					e("\tVADDPS %d(DX), %s, %s", j*vb, r, r)
				}
				e("\tVMOVUPS %s, %d(DX)", r, j*vb)
			}
			if i < k.mr-1 {
				e("\tADDQ R8, DX")
			}
		}
		e("\tVZEROUPPER")
		e("\tRET")
	}
	// Store: add to C when load is set, else overwrite it.
	e("%s_store:", k.name)
	e("\tMOVBLZX %s, AX", loadArg)
	e("\tTESTL AX, AX")
	e("\tJEQ %s_nl", k.name)
	storeTile(true)
	e("%s_nl:", k.name)
	storeTile(false)
	return strings.Join(lines, "\n")
}

func main() {
	out := flag.String("o", ".", "directory to write the .s files into")
	flag.Parse()
	for _, f := range files {
		path := filepath.Join(*out, f.name)
		if err := os.WriteFile(path, []byte(f.render()), 0o644); err != nil {
			log.Fatalf("gengemm: %v", err)
		}
	}
}
