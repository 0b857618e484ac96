// bench_test.go: benchmarks at SD 1.5 shapes (GEMM 1024^3 on each backend,
// a 3x3 conv at 64x64x320, attention at 4096 tokens, GroupNorm) reporting
// GFLOP/s where it means something. Run with -benchtime=3x on shared
// machines; they do not check results (kernels_test.go does).
package nn

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func benchGemm(b *testing.B, n int, gemm func(bool, bool, int, int, int, float32, []float32, int, []float32, int, float32, []float32, int)) {
	r := rand.New(rand.NewPCG(1, 1))
	a, bb, c := randSlice(r, n*n), randSlice(r, n*n), make([]float32, n*n)
	b.SetBytes(int64(3 * 4 * n * n))
	b.ReportAllocs()
	for b.Loop() {
		gemm(false, false, n, n, n, 1, a, n, bb, n, 0, c, n)
	}
	b.ReportMetric(2*float64(n)*float64(n)*float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

func BenchmarkGemm1024(b *testing.B) {
	// OpenBLAS whenever it loads, even where Go is the default backend.
	openBLASLib()
	b.Run("openblas", func(b *testing.B) {
		if blas.sgemm == nil {
			b.Skip("OpenBLAS not loaded: " + blas.err)
		}
		benchGemm(b, 1024, blasSgemm)
	})
	// OpenBLAS on one thread, for the per-core figure.
	b.Run("openblas-1thread", func(b *testing.B) {
		if blas.sgemm == nil || blas.setThreads == nil {
			b.Skip("OpenBLAS not loaded or no openblas_set_num_threads")
		}
		blas.setThreads(1)
		defer blas.setThreads(int32(workers()))
		benchGemm(b, 1024, blasSgemm)
	})
	saved := kern
	defer func() { kern = saved }()
	for _, k := range availableKernels() {
		kern = k
		b.Run("go-"+k.name, func(b *testing.B) { benchGemm(b, 1024, GemmGo) })
	}
}

func BenchmarkConv2dSD(b *testing.B) {
	r := rand.New(rand.NewPCG(2, 2))
	x := randTensor(r, 2, 320, 64, 64)
	c := &Conv2d{Weight: randTensor(r, 320, 320, 3, 3), Bias: randTensor(r, 320), Stride: 1, Padding: 1}
	b.SetBytes(int64(4 * x.Numel()))
	b.ReportAllocs()
	for b.Loop() {
		c.Forward(x)
	}
	flops := 2.0 * 2 * 320 * 64 * 64 * 320 * 9
	b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

func BenchmarkAttentionSD(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 3))
	q, k, v := randTensor(r, 2, 4096, 320), randTensor(r, 2, 4096, 320), randTensor(r, 2, 4096, 320)
	b.SetBytes(int64(4 * 3 * q.Numel()))
	b.ReportAllocs()
	for b.Loop() {
		ScaledDotProductAttention(q, k, v, 8, AttentionOpts{})
	}
	flops := 2.0 * 2 * 2 * 4096 * 4096 * 320
	b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

func BenchmarkGroupNormSD(b *testing.B) {
	r := rand.New(rand.NewPCG(4, 4))
	x := randTensor(r, 2, 320, 64, 64)
	g := &GroupNorm{Groups: 32, Eps: 1e-5, Weight: randTensor(r, 320), Bias: randTensor(r, 320)}
	b.SetBytes(int64(4 * x.Numel()))
	b.ReportAllocs()
	for b.Loop() {
		g.ForwardSiLU(x)
	}
}

// BenchmarkGemmBlocking sweeps the Go kernel's block sizes at 1024^3.
func BenchmarkGemmBlocking(b *testing.B) {
	kc0, mc0, nc0 := gemmKC, gemmMC, gemmNC
	defer func() { gemmKC, gemmMC, gemmNC = kc0, mc0, nc0 }()
	for _, kc := range []int{128, 192, 256, 384, 512} {
		for _, mc := range []int{96, 192, 384} {
			for _, nc := range []int{1024, 2048, 4096} {
				gemmKC, gemmMC, gemmNC = kc, mc, nc
				b.Run(fmt.Sprintf("kc%d_mc%d_nc%d", kc, mc, nc), func(b *testing.B) { benchGemm(b, 1024, GemmGo) })
			}
		}
	}
}

// BenchmarkGemmNarrow is attention's P*V product for one query block
// (256 x 40 x 4096), where packing A cannot be amortised.
func BenchmarkGemmNarrow(b *testing.B) {
	r := rand.New(rand.NewPCG(5, 5))
	m, n, k := 256, 40, 4096
	a, bb, c := randSlice(r, m*k), randSlice(r, k*n), make([]float32, m*n)
	b.SetBytes(int64(4 * (m*k + k*n + m*n)))
	b.ReportAllocs()
	for b.Loop() {
		gemmSerial(false, false, m, n, k, 1, a, k, bb, n, 0, c, n)
	}
	b.ReportMetric(2*float64(m*n*k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkGemmShapes times SD-like products (Linear, conv, square) with A
// packed or read in place (gemmDirectAMaxN 0 or unlimited).
func BenchmarkGemmShapes(b *testing.B) {
	shapes := []struct {
		name    string
		m, n, k int
		transB  bool
	}{
		{"linear2048x320x320", 2048, 320, 320, true},
		{"linear2048x1280x320", 2048, 1280, 320, true},
		{"linear2048x320x1280", 2048, 320, 1280, true},
		{"kv154x320x768", 154, 320, 768, true},
		{"conv320x1024x2880", 320, 1024, 2880, false},
		{"sq1024", 1024, 1024, 1024, false},
	}
	saved := gemmDirectAMaxN
	defer func() { gemmDirectAMaxN = saved }()
	for _, sh := range shapes {
		for _, mode := range []struct {
			name string
			maxN int
		}{{"packed", 0}, {"direct", 1 << 30}} {
			b.Run(sh.name+"/"+mode.name, func(b *testing.B) {
				gemmDirectAMaxN = mode.maxN
				r := rand.New(rand.NewPCG(6, 6))
				a, bb, c := randSlice(r, sh.m*sh.k), randSlice(r, sh.k*sh.n), make([]float32, sh.m*sh.n)
				ldb := sh.n
				if sh.transB {
					ldb = sh.k
				}
				b.SetBytes(int64(4 * (sh.m*sh.k + sh.k*sh.n + sh.m*sh.n)))
				b.ReportAllocs()
				for b.Loop() {
					GemmGo(false, sh.transB, sh.m, sh.n, sh.k, 1, a, sh.k, bb, ldb, 0, c, sh.n)
				}
				b.ReportMetric(2*float64(sh.m*sh.n*sh.k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}

// BenchmarkAttentionBlock sweeps the query block size at the SD 512px shape.
func BenchmarkAttentionBlock(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 3))
	q, k, v := randTensor(r, 2, 4096, 320), randTensor(r, 2, 4096, 320), randTensor(r, 2, 4096, 320)
	saved := attnBlock
	defer func() { attnBlock = saved }()
	for _, bq := range []int{32, 64, 128, 256} {
		b.Run(fmt.Sprint(bq), func(b *testing.B) {
			attnBlock = bq
			b.SetBytes(int64(4 * 3 * q.Numel()))
			b.ReportAllocs()
			for b.Loop() {
				ScaledDotProductAttention(q, k, v, 8, AttentionOpts{})
			}
			b.ReportMetric(2*2*2*4096*4096*320*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
