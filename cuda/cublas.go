// cublas.go: cuBLAS opened at run time, with row-major GEMM wrappers over
// device buffers. cuBLAS is column-major; a row-major C = op(A) op(B) is
// the column-major C^T = op(B)^T op(A)^T, so each wrapper swaps the
// operands and m/n (colMajorArgs, checked by a test against a fake). It
// binds SGEMM, GemmEx (fp16/bf16 inputs, fp32 compute), and strided
// batched SGEMM. cuBLASLt matmuls with bias/GELU epilogues are in
// cublaslt.go. FixWorkspace gives a handle its own device workspace
// (cublasSetWorkspace_v2, optional) for graph capture (see graph.go).
package cuda

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

// cuBLAS enums (cublas_api.h, library_types.h).
const (
	cublasOpN = 0
	cublasOpT = 1

	// DataType values (cudaDataType).
	R32F  DataType = 0
	R16F  DataType = 2
	R16BF DataType = 14

	cublasCompute32F    = 68
	cublasGemmDefault   = -1
	cublasGemmDefaultTO = 99 // CUBLAS_GEMM_DEFAULT_TENSOR_OP (deprecated alias, still accepted)
)

// DataType is a cudaDataType element type for GemmEx.
type DataType int32

// Size returns the element size in bytes.
func (t DataType) Size() int {
	if t == R32F {
		return 4
	}
	return 2
}

type cublasAPI struct {
	path string

	cublasCreate              func(h *uintptr) int32
	cublasDestroy             func(h uintptr) int32
	cublasSetStream           func(h uintptr, s uintptr) int32
	cublasGetVersion          func(h uintptr, v *int32) int32
	cublasSetMathMode         func(h uintptr, mode int32) int32
	cublasSetWorkspace        func(h uintptr, ws uint64, n uint64) int32
	cublasSgemm               func(h uintptr, ta, tb, m, n, k int32, alpha *float32, a uint64, lda int32, b uint64, ldb int32, beta *float32, c uint64, ldc int32) int32
	cublasGemmEx              func(h uintptr, ta, tb, m, n, k int32, alpha unsafe.Pointer, a uint64, at int32, lda int32, b uint64, bt int32, ldb int32, beta unsafe.Pointer, c uint64, ct int32, ldc int32, compute int32, algo int32) int32
	cublasSgemmStridedBatched func(h uintptr, ta, tb, m, n, k int32, alpha *float32, a uint64, lda int32, sa int64, b uint64, ldb int32, sb int64, beta *float32, c uint64, ldc int32, sc int64, count int32) int32
}

// cublasNames are the sonames tried, newest first.
var cublasNames = []string{"libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"}

var cublasLib struct {
	once sync.Once
	api  *cublasAPI
	err  error
}

func loadCublas() (*cublasAPI, error) {
	cublasLib.once.Do(func() {
		path, h, err := openLib(cublasNames, nil)
		if err != nil {
			cublasLib.err = fmt.Errorf("cuda: cuBLAS (libcublas.so.13/.12) not found; install the CUDA toolkit or nvidia-cublas, set SDBRIDGE_CUDA_LIB_DIR, or use --device cpu (%v)", err)
			return
		}
		a := &cublasAPI{path: path}
		cublasLib.err = bindAll(path, h, []sym{
			{name: "cublasCreate_v2", fn: &a.cublasCreate},
			{name: "cublasDestroy_v2", fn: &a.cublasDestroy},
			{name: "cublasSetStream_v2", fn: &a.cublasSetStream},
			{name: "cublasGetVersion_v2", fn: &a.cublasGetVersion},
			{name: "cublasSetMathMode", fn: &a.cublasSetMathMode, optional: true},
			{name: "cublasSetWorkspace_v2", fn: &a.cublasSetWorkspace, optional: true},
			{name: "cublasSgemm_v2", fn: &a.cublasSgemm},
			{name: "cublasGemmEx", fn: &a.cublasGemmEx},
			{name: "cublasSgemmStridedBatched", fn: &a.cublasSgemmStridedBatched},
		})
		if cublasLib.err == nil {
			cublasLib.api = a
		}
	})
	return cublasLib.api, cublasLib.err
}

// BLAS is a cuBLAS handle bound to a device and its stream.
type BLAS struct {
	dev     *Device
	api     *cublasAPI
	h       uintptr
	ws      *Buffer // fixed workspace (FixWorkspace), nil before
	unhook  func()  // removes the FixOnCapture hook
	Path    string
	Version int
}

// cublasError is a failed cuBLAS call.
type cublasError struct {
	op   string
	code int32
}

func (e *cublasError) Error() string {
	names := map[int32]string{1: "NOT_INITIALIZED", 3: "ALLOC_FAILED", 7: "INVALID_VALUE", 8: "ARCH_MISMATCH", 11: "MAPPING_ERROR", 13: "EXECUTION_FAILED", 14: "INTERNAL_ERROR", 15: "NOT_SUPPORTED", 16: "LICENSE_ERROR"}
	return fmt.Sprintf("cuda: %s: CUBLAS_STATUS_%s (%d)", e.op, names[e.code], e.code)
}

func cublasCheck(op string, r int32) error {
	if r == 0 {
		return nil
	}
	return &cublasError{op: op, code: r}
}

// NewBLAS creates a cuBLAS handle on d, queued on d's stream.
func (d *Device) NewBLAS() (*BLAS, error) {
	a, err := loadCublas()
	if err != nil {
		return nil, err
	}
	b := &BLAS{dev: d, api: a, Path: a.path}
	err = d.Do(func() error {
		if err := cublasCheck("cublasCreate", a.cublasCreate(&b.h)); err != nil {
			return err
		}
		var v int32
		if a.cublasGetVersion(b.h, &v) == 0 {
			b.Version = int(v)
		}
		return cublasCheck("cublasSetStream", a.cublasSetStream(b.h, d.stream))
	})
	if err != nil {
		return nil, err
	}
	// Every handle is safe in graph captures: a Capture on d fixes its
	// workspace first (graph.go).
	b.unhook = b.FixOnCapture()
	return b, nil
}

// cuBLAS math modes (cublasMath_t).
const (
	cublasDefaultMath    = 0
	cublasTF32TensorMath = 3
)

// SetTF32 allows (true) or forbids (false, the default) TF32 tensor-core
// arithmetic in SGEMM: about 8x the fp32 rate at ~1e-3 relative error.
func (bl *BLAS) SetTF32(on bool) error {
	if bl.api.cublasSetMathMode == nil {
		return fmt.Errorf("cuda: this cuBLAS has no cublasSetMathMode")
	}
	mode := int32(cublasDefaultMath)
	if on {
		mode = cublasTF32TensorMath
	}
	return bl.dev.Do(func() error { return cublasCheck("cublasSetMathMode", bl.api.cublasSetMathMode(bl.h, mode)) })
}

// Recommended cuBLAS workspace sizes (NVIDIA's cuBLAS docs,
// cublasSetWorkspace): 32 MiB on Hopper (sm_90) and newer, 4 MiB before,
// the size of cuBLAS's own default pool.
const (
	cublasWorkspaceHopper = 32 << 20
	cublasWorkspaceOther  = 4 << 20
)

// FixWorkspace gives the handle a device workspace of its own, of the
// recommended size for the device, bound with cublasSetWorkspace_v2, so
// GEMMs captured into a graph use that fixed buffer instead of cuBLAS's
// internal pool (or stream-ordered allocations, which would become memory
// nodes of the graph). Call it before Device.Capture (it allocates: it
// fails with ErrCapturing during a capture); once is enough, later calls
// do nothing. The workspace lives until Close; every graph that captured
// GEMMs of this handle must be closed before. Without the symbol (old
// cuBLAS) it returns a *MissingSymbolError and cuBLAS keeps its own
// workspace.
func (bl *BLAS) FixWorkspace() error {
	if bl.ws != nil {
		return nil
	}
	if bl.api.cublasSetWorkspace == nil {
		return &MissingSymbolError{Lib: bl.api.path, Symbol: "cublasSetWorkspace_v2"}
	}
	if err := bl.dev.notCapturing("cuBLAS workspace allocation"); err != nil {
		return err
	}
	n := cublasWorkspaceOther
	if bl.dev.Major >= 9 {
		n = cublasWorkspaceHopper
	}
	ws, err := bl.dev.Alloc(n) // cuMemAlloc: 256-byte aligned as cuBLAS requires
	if err != nil {
		return fmt.Errorf("cuda: cuBLAS workspace: %w", err)
	}
	err = bl.dev.Do(func() error {
		return cublasCheck("cublasSetWorkspace", bl.api.cublasSetWorkspace(bl.h, ws.Ptr, uint64(n)))
	})
	if err != nil {
		return errors.Join(err, ws.Free())
	}
	bl.ws = ws
	return nil
}

// Workspace returns the size in bytes of the fixed workspace set by
// FixWorkspace (0 when cuBLAS uses its own).
func (bl *BLAS) Workspace() int {
	if bl.ws == nil {
		return 0
	}
	return bl.ws.Size
}

// Close destroys the handle and frees its fixed workspace.
func (b *BLAS) Close() error {
	if b.unhook != nil {
		b.unhook()
		b.unhook = nil
	}
	err := b.dev.Do(func() error { return cublasCheck("cublasDestroy", b.api.cublasDestroy(b.h)) })
	if b.ws != nil {
		err = errors.Join(err, b.ws.Free())
		b.ws = nil
	}
	return err
}

// colGemm is one column-major GEMM call: C = op(A) op(B), C is m x n.
type colGemm struct {
	opA, opB      int32
	m, n, k       int
	lda, ldb, ldc int
}

// colMajorArgs maps a row-major C[m,n] = op(A) op(B) (A is [m,k] or, with
// transA, [k,m]; B is [k,n] or [n,k]) with row strides lda, ldb, ldc onto
// the column-major call C^T = op(B)^T op(A)^T: first operand the caller's
// B, second the caller's A. It checks the leading dimensions.
func colMajorArgs(transA, transB bool, m, n, k, lda, ldb, ldc int) (colGemm, error) {
	if m <= 0 || n <= 0 || k <= 0 {
		return colGemm{}, fmt.Errorf("cuda: gemm with m=%d n=%d k=%d", m, n, k)
	}
	aCols, bCols := k, n
	if transA {
		aCols = m
	}
	if transB {
		bCols = k
	}
	if lda < aCols || ldb < bCols || ldc < n {
		return colGemm{}, fmt.Errorf("cuda: gemm leading dimensions lda=%d ldb=%d ldc=%d too small for m=%d n=%d k=%d transA=%v transB=%v", lda, ldb, ldc, m, n, k, transA, transB)
	}
	op := func(t bool) int32 {
		if t {
			return cublasOpT
		}
		return cublasOpN
	}
	return colGemm{opA: op(transB), opB: op(transA), m: n, n: m, k: k, lda: ldb, ldb: lda, ldc: ldc}, nil
}

// Sgemm queues row-major fp32 C = alpha op(A) op(B) + beta C on the
// device's stream (same argument meaning as nn.Gemm; a, b, c are float32
// buffers).
func (bl *BLAS) Sgemm(transA, transB bool, m, n, k int, alpha float32, a *Buffer, lda int, b *Buffer, ldb int, beta float32, c *Buffer, ldc int) error {
	g, err := colMajorArgs(transA, transB, m, n, k, lda, ldb, ldc)
	if err != nil {
		return err
	}
	return bl.dev.Do(func() error {
		r := bl.api.cublasSgemm(bl.h, g.opA, g.opB, int32(g.m), int32(g.n), int32(g.k), &alpha, b.Ptr, int32(g.lda), a.Ptr, int32(g.ldb), &beta, c.Ptr, int32(g.ldc))
		return cublasCheck("cublasSgemm", r)
	})
}

// GemmEx queues row-major C = alpha op(A) op(B) + beta C with A and B of
// type in (R16F or R16BF), C of type out (R16F, R16BF or R32F) and fp32
// accumulation (CUBLAS_COMPUTE_32F, tensor cores allowed).
func (bl *BLAS) GemmEx(transA, transB bool, m, n, k int, alpha float32, a *Buffer, lda int, b *Buffer, ldb int, beta float32, c *Buffer, ldc int, in, out DataType) error {
	g, err := colMajorArgs(transA, transB, m, n, k, lda, ldb, ldc)
	if err != nil {
		return err
	}
	return bl.dev.Do(func() error {
		r := bl.api.cublasGemmEx(bl.h, g.opA, g.opB, int32(g.m), int32(g.n), int32(g.k), unsafe.Pointer(&alpha),
			b.Ptr, int32(in), int32(g.lda), a.Ptr, int32(in), int32(g.ldb), unsafe.Pointer(&beta),
			c.Ptr, int32(out), int32(g.ldc), cublasCompute32F, cublasGemmDefault)
		return cublasCheck("cublasGemmEx", r)
	})
}

// SgemmStridedBatched queues count row-major fp32 GEMMs; operand i starts
// strideX elements after operand i-1 (pointers are a.Ptr+4*offA etc.).
func (bl *BLAS) SgemmStridedBatched(transA, transB bool, m, n, k int, alpha float32, a *Buffer, offA, lda, strideA int, b *Buffer, offB, ldb, strideB int, beta float32, c *Buffer, offC, ldc, strideC int, count int) error {
	g, err := colMajorArgs(transA, transB, m, n, k, lda, ldb, ldc)
	if err != nil {
		return err
	}
	pa, pb, pc := a.Ptr+uint64(4*offA), b.Ptr+uint64(4*offB), c.Ptr+uint64(4*offC)
	return bl.dev.Do(func() error {
		r := bl.api.cublasSgemmStridedBatched(bl.h, g.opA, g.opB, int32(g.m), int32(g.n), int32(g.k), &alpha,
			pb, int32(g.lda), int64(strideB), pa, int32(g.ldb), int64(strideA), &beta, pc, int32(g.ldc), int64(strideC), int32(count))
		return cublasCheck("cublasSgemmStridedBatched", r)
	})
}
