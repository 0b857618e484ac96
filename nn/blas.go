// blas.go: OpenBLAS loaded at run time through purego (no cgo, works with
// CGO_ENABLED=0), looked up once under its common sonames. SDBRIDGE_BLAS
// picks the GEMM backend:
//
//	(unset)   the Go kernel when this CPU has a SIMD one (AVX-512 or
//	          AVX2+FMA assembly), else OpenBLAS if it loads, else the
//	          portable Go kernel. Measured on 2-core AMD EPYC and Intel
//	          Xeon machines, a whole U-Net step ran 1.6-3x faster on the
//	          Go kernels (implicit-GEMM convolution, A read in place, no
//	          OpenBLAS threads spinning between calls), even where
//	          OpenBLAS matched them on a bare 1024^3 product.
//	openblas  OpenBLAS whenever it loads
//	go        the Go kernel only
//
// It binds only cblas_sgemm (and sets OpenBLAS's thread count to
// GOMAXPROCS unless OPENBLAS_NUM_THREADS is set); no other BLAS or LAPACK
// routine.
package nn

import (
	"os"
	"strings"
	"sync"

	"github.com/ebitengine/purego"
)

// cblas enums (cblas.h).
const (
	cblasRowMajor = 101
	cblasNoTrans  = 111
	cblasTrans    = 112
)

var blas struct {
	once    sync.Once // the backend decision
	libOnce sync.Once // the dlopen
	ok      bool      // Gemm uses OpenBLAS
	name    string    // soname that loaded
	err     string    // why OpenBLAS is not used
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

// openBLASLib loads the library once (tests and benchmarks call it to
// reach OpenBLAS whatever the backend decision) and reports success.
func openBLASLib() bool {
	blas.libOnce.Do(func() {
		var errs []string
		for _, name := range blasNames {
			lib, err := purego.Dlopen(name, purego.RTLD_NOW|purego.RTLD_GLOBAL)
			if err != nil {
				errs = append(errs, err.Error())
				continue
			}
			sym, err := purego.Dlsym(lib, "cblas_sgemm")
			if err != nil {
				errs = append(errs, name+": "+err.Error())
				continue
			}
			purego.RegisterFunc(&blas.sgemm, sym)
			// As many OpenBLAS threads as Go may use (GOMAXPROCS), unless
			// the user chose with OPENBLAS_NUM_THREADS.
			if set, err := purego.Dlsym(lib, "openblas_set_num_threads"); err == nil {
				purego.RegisterFunc(&blas.setThreads, set)
				if os.Getenv("OPENBLAS_NUM_THREADS") == "" {
					blas.setThreads(int32(workers()))
				}
			}
			blas.name = name
			return
		}
		blas.err = "not found (" + strings.Join(errs[:min(len(errs), 2)], "; ") + ")"
	})
	return blas.sgemm != nil
}

func loadBLAS() {
	switch mode := os.Getenv("SDBRIDGE_BLAS"); {
	case mode == "go":
		blas.err = "disabled by SDBRIDGE_BLAS=go"
		return
	case mode != "openblas" && kern.simd:
		blas.err = "not used: the " + kern.name + " kernel is the default here (SDBRIDGE_BLAS=openblas selects OpenBLAS)"
		return
	}
	blas.ok = openBLASLib()
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
