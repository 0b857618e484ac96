// gemm_kernel_amd64.go: picks the GEMM micro-kernel on amd64 from the CPU's
// features (AVX-512F: 12x32 tile, 12x16 for narrow last panels; AVX2+FMA:
// 6x16; else portable Go 4x4)
// and wraps the assembly kernels with the bounds checks Go cannot do for
// them. It does not change the choice after start-up.
package nn

import (
	"os"
	"strings"

	"golang.org/x/sys/cpu"
)

//go:noescape
func sgemmKernel12x32AVX512(k int, a, b, c *float32, ldc int, load bool)

//go:noescape
func sgemmKernel6x16AVX2(k int, a, b, c *float32, ldc int, load bool)

//go:noescape
func sgemmKernel12x32AVX512DirectA(k int, a *float32, lda int, b, c *float32, ldc int, load bool)

//go:noescape
func sgemmKernel12x16AVX512(k int, a, b, c *float32, ldc int, load bool)

//go:noescape
func sgemmKernel12x16AVX512DirectA(k int, a *float32, lda int, b, c *float32, ldc int, load bool)

//go:noescape
func sgemmKernel6x16AVX2DirectA(k int, a *float32, lda int, b, c *float32, ldc int, load bool)

var (
	kernAVX512 = microKernel{mr: 12, nr: 32, name: "avx512-12x32", simd: true,
		fn: func(k int, a, b, c []float32, ldc int, load bool) {
			_, _, _ = a[12*k-1], b[32*k-1], c[11*ldc+31]
			sgemmKernel12x32AVX512(k, &a[0], &b[0], &c[0], ldc, load)
		},
		fnA: func(k int, a []float32, lda int, b, c []float32, ldc int, load bool) {
			_, _, _ = a[11*lda+k-1], b[32*k-1], c[11*ldc+31]
			sgemmKernel12x32AVX512DirectA(k, &a[0], lda, &b[0], &c[0], ldc, load)
		},
		fnHalf: func(k int, a, b, c []float32, ldc int, load bool) {
			_, _, _ = a[12*k-1], b[16*k-1], c[11*ldc+15]
			sgemmKernel12x16AVX512(k, &a[0], &b[0], &c[0], ldc, load)
		},
		fnHalfA: func(k int, a []float32, lda int, b, c []float32, ldc int, load bool) {
			_, _, _ = a[11*lda+k-1], b[16*k-1], c[11*ldc+15]
			sgemmKernel12x16AVX512DirectA(k, &a[0], lda, &b[0], &c[0], ldc, load)
		}}
	kernAVX2 = microKernel{mr: 6, nr: 16, name: "avx2-6x16", simd: true,
		fn: func(k int, a, b, c []float32, ldc int, load bool) {
			_, _, _ = a[6*k-1], b[16*k-1], c[5*ldc+15]
			sgemmKernel6x16AVX2(k, &a[0], &b[0], &c[0], ldc, load)
		},
		fnA: func(k int, a []float32, lda int, b, c []float32, ldc int, load bool) {
			_, _, _ = a[5*lda+k-1], b[16*k-1], c[5*ldc+15]
			sgemmKernel6x16AVX2DirectA(k, &a[0], lda, &b[0], &c[0], ldc, load)
		}}
	kernGo   = microKernel{mr: 4, nr: 8, name: "go-4x8", fn: goKernel4x8}
	kernGo44 = microKernel{mr: 4, nr: 4, name: "go-4x4", fn: goKernel4x4}
)

// pickKernel returns the fastest kernel the CPU runs; SDBRIDGE_GEMM_KERNEL
// (avx512, avx2, go) narrows the choice for testing.
func pickKernel() microKernel {
	ks := availableKernels()
	want := os.Getenv("SDBRIDGE_GEMM_KERNEL")
	for _, k := range ks {
		if strings.HasPrefix(k.name, want) {
			return k
		}
	}
	return ks[0]
}

// availableKernels lists every micro-kernel this CPU can run, fastest
// first (for tests and benchmarks).
func availableKernels() []microKernel {
	var ks []microKernel
	if cpu.X86.HasAVX512F {
		ks = append(ks, kernAVX512)
	}
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		ks = append(ks, kernAVX2)
	}
	return append(ks, kernGo44, kernGo) // 4x4 measured faster than 4x8 on amd64 (16 XMM registers)
}
