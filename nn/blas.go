// blas.go: OpenBLAS loaded at run time through purego (no cgo, works with
// CGO_ENABLED=0). The library is looked up once, on first use, under its
// common sonames. SDBRIDGE_BLAS picks the GEMM backend:
//
//	auto (default)  OpenBLAS if present and a quick timing shows it faster
//	                than the Go kernel (a generic OpenBLAS build on a CPU
//	                it does not recognise can be 3-4x slower)
//	openblas        OpenBLAS whenever it loads
//	go              the Go kernel only
//
// It binds only cblas_sgemm (and sets OpenBLAS's thread count to
// GOMAXPROCS unless OPENBLAS_NUM_THREADS is set); no other BLAS or LAPACK
// routine.
package nn

import (
	"fmt"
	"math"
	"os"
	"sync"
	"time"

	"github.com/ebitengine/purego"
)

// cblas enums (cblas.h).
const (
	cblasRowMajor = 101
	cblasNoTrans  = 111
	cblasTrans    = 112
)

var blas struct {
	once sync.Once
	ok   bool
	name string
	err  string
	note string // calibration result, when one ran
	// setThreads is openblas_set_num_threads, or nil.
	setThreads func(int32)
	sgemm      func(order, transA, transB, m, n, k int32, alpha float32, a *float32, lda int32, b *float32, ldb int32, beta float32, c *float32, ldc int32)
}

// blasNames are the sonames tried in order.
var blasNames = []string{
	"libopenblas.so.0",
	"libopenblas.so",
	"libopenblasp.so.0",
	"libopenblaso.so.0",
	"/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
	"/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
	"/usr/lib64/libopenblas.so.0",
	"/usr/local/lib/libopenblas.so.0",
	"/usr/local/lib/libopenblas.so",
}

func loadBLAS() {
	mode := os.Getenv("SDBRIDGE_BLAS")
	if mode == "go" {
		blas.err = "disabled by SDBRIDGE_BLAS=go"
		return
	}
	for _, name := range blasNames {
		lib, err := purego.Dlopen(name, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			blas.err = err.Error()
			continue
		}
		sym, err := purego.Dlsym(lib, "cblas_sgemm")
		if err != nil {
			blas.err = name + ": " + err.Error()
			continue
		}
		purego.RegisterFunc(&blas.sgemm, sym)
		// As many OpenBLAS threads as Go may use (GOMAXPROCS), unless the
		// user chose with OPENBLAS_NUM_THREADS.
		if set, err := purego.Dlsym(lib, "openblas_set_num_threads"); err == nil {
			purego.RegisterFunc(&blas.setThreads, set)
			if os.Getenv("OPENBLAS_NUM_THREADS") == "" {
				blas.setThreads(int32(workers()))
			}
		}
		blas.ok, blas.name, blas.err = true, name, ""
		if mode != "openblas" {
			calibrateBLAS()
		}
		return
	}
}

// calibrateBLAS (SDBRIDGE_BLAS=auto) times one 384^3 product on each
// backend, best of three (a few milliseconds in all), and keeps OpenBLAS
// only if it is faster.
func calibrateBLAS() {
	const n = 384
	a, b, c := make([]float32, n*n), make([]float32, n*n), make([]float32, n*n)
	for i := range a {
		a[i], b[i] = float32(i%7)-3, float32(i%5)-2
	}
	best := func(f gemmFunc) time.Duration {
		d := time.Duration(math.MaxInt64)
		for range 3 {
			t0 := time.Now()
			f(false, false, n, n, n, 1, a, n, b, n, 0, c, n)
			d = min(d, time.Since(t0))
		}
		return d
	}
	tb, tg := best(blasSgemm), best(GemmGo)
	blas.note = fmt.Sprintf("%d^3: openblas %v, go %v", n, tb.Round(time.Microsecond), tg.Round(time.Microsecond))
	if tg < tb {
		blas.ok = false
		blas.err = blas.name + " slower than the Go kernel (" + blas.note + ")"
	}
}

func blasOK() bool {
	blas.once.Do(loadBLAS)
	return blas.ok
}

// GemmBackend names the GEMM implementation Gemm uses for large products:
// "openblas (<soname>)" or "go (<micro-kernel>)" with the reason OpenBLAS
// is not used.
func GemmBackend() string {
	if blasOK() {
		if blas.note != "" {
			return "openblas (" + blas.name + "; " + blas.note + ")"
		}
		return "openblas (" + blas.name + ")"
	}
	return "go (" + kern.name + "; openblas: " + blas.err + ")"
}

// GemmGoKernel names the pure-Go backend's micro-kernel.
func GemmGoKernel() string { return kern.name }

func blasSgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	ta, tb := int32(cblasNoTrans), int32(cblasNoTrans)
	// Touch the last element each operand needs so a short slice panics in
	// Go instead of corrupting memory in C.
	if transA {
		ta = cblasTrans
		_ = a[(k-1)*lda+m-1]
	} else {
		_ = a[(m-1)*lda+k-1]
	}
	if transB {
		tb = cblasTrans
		_ = b[(n-1)*ldb+k-1]
	} else {
		_ = b[(k-1)*ldb+n-1]
	}
	_ = c[(m-1)*ldc+n-1]
	blas.sgemm(cblasRowMajor, ta, tb, int32(m), int32(n), int32(k), alpha, &a[0], int32(lda), &b[0], int32(ldb), beta, &c[0], int32(ldc))
}
