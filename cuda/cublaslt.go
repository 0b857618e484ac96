// cublaslt.go: cuBLASLt opened at run time, for row-major matrix products
// with a fused epilogue: D = act(alpha op(A) op(B) + beta C + bias), the
// bias broadcast along rows (one value per output column, as in a Linear
// layer) and act none, ReLU or GELU. A, B, C and the bias are all fp16 or
// all fp32, accumulation is fp32 (CUBLAS_COMPUTE_32F). As in cublas.go the
// row-major product is the column-major C^T = op(B)^T op(A)^T
// (colMajorArgs); the row bias becomes cuBLASLt's per-row bias of D^T.
//
// Descriptors and the chosen algorithm are cached per shape. Where the
// library has the heuristics query, the algorithm comes from it with a 32
// MiB workspace allocated once; otherwise (older stand-ins) algo is NULL
// and cuBLASLt chooses. cuBLASLt's GELU is the tanh approximation (its
// documentation), which differs from the erf form by up to ~1e-3; use
// EpilogueBias plus an erf kernel where that matters. It does not bind
// batched layouts, FP8 scaling or auxiliary (training) outputs.
package cuda

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

// Epilogue is a cublasLtEpilogue_t: what is applied to the product.
type Epilogue int32

// Epilogues (cublasLt.h).
const (
	EpilogueNone     Epilogue = 1  // CUBLASLT_EPILOGUE_DEFAULT
	EpilogueReLU     Epilogue = 2  // CUBLASLT_EPILOGUE_RELU
	EpilogueBias     Epilogue = 4  // CUBLASLT_EPILOGUE_BIAS
	EpilogueReLUBias Epilogue = 6  // CUBLASLT_EPILOGUE_RELU_BIAS
	EpilogueGELU     Epilogue = 32 // CUBLASLT_EPILOGUE_GELU (tanh form)
	EpilogueGELUBias Epilogue = 36 // CUBLASLT_EPILOGUE_GELU_BIAS (bias, then GELU)
)

// hasBias reports whether e reads a bias vector.
func (e Epilogue) hasBias() bool { return e&EpilogueBias != 0 }

func (e Epilogue) String() string {
	switch e {
	case EpilogueNone, 0:
		return "none"
	case EpilogueReLU:
		return "relu"
	case EpilogueBias:
		return "bias"
	case EpilogueReLUBias:
		return "relu+bias"
	case EpilogueGELU:
		return "gelu"
	case EpilogueGELUBias:
		return "gelu+bias"
	}
	return fmt.Sprintf("epilogue(%d)", int32(e))
}

// cublasLtMatmulDescAttributes_t, cublasLtMatmulPreferenceAttributes_t.
const (
	ltDescTransA           = 3
	ltDescTransB           = 4
	ltDescEpilogue         = 7
	ltDescBiasPointer      = 8
	ltPrefMaxWorkspace     = 1
	ltWorkspaceBytes       = 32 << 20
	ltHeuristicResultBytes = 96 // cublasLtMatmulHeuristicResult_t: algo[64] workspaceSize state wavesCount reserved[4]
)

type ltAPI struct {
	path string

	cublasLtCreate                 func(h *uintptr) int32
	cublasLtDestroy                func(h uintptr) int32
	cublasLtGetVersion             func() uint64
	cublasLtMatmulDescCreate       func(d *uintptr, compute int32, scale int32) int32
	cublasLtMatmulDescDestroy      func(d uintptr) int32
	cublasLtMatmulDescSetAttribute func(d uintptr, attr int32, buf unsafe.Pointer, size uint64) int32
	cublasLtMatrixLayoutCreate     func(l *uintptr, typ int32, rows, cols uint64, ld int64) int32
	cublasLtMatrixLayoutDestroy    func(l uintptr) int32
	cublasLtMatmul                 func(h, desc uintptr, alpha unsafe.Pointer, a uint64, adesc uintptr, b uint64, bdesc uintptr, beta unsafe.Pointer, c uint64, cdesc uintptr, d uint64, ddesc uintptr, algo unsafe.Pointer, ws uint64, wsSize uint64, stream uintptr) int32

	// Optional: without them algo is NULL and there is no workspace.
	cublasLtMatmulPreferenceCreate       func(p *uintptr) int32
	cublasLtMatmulPreferenceDestroy      func(p uintptr) int32
	cublasLtMatmulPreferenceSetAttribute func(p uintptr, attr int32, buf unsafe.Pointer, size uint64) int32
	cublasLtMatmulAlgoGetHeuristic       func(h, desc, adesc, bdesc, cdesc, ddesc, pref uintptr, req int32, results unsafe.Pointer, n *int32) int32
}

func (a *ltAPI) libPath() string { return a.path }

func (a *ltAPI) syms() []sym {
	return []sym{
		{name: "cublasLtCreate", fn: &a.cublasLtCreate},
		{name: "cublasLtDestroy", fn: &a.cublasLtDestroy},
		{name: "cublasLtGetVersion", fn: &a.cublasLtGetVersion, optional: true},
		{name: "cublasLtMatmulDescCreate", fn: &a.cublasLtMatmulDescCreate},
		{name: "cublasLtMatmulDescDestroy", fn: &a.cublasLtMatmulDescDestroy},
		{name: "cublasLtMatmulDescSetAttribute", fn: &a.cublasLtMatmulDescSetAttribute},
		{name: "cublasLtMatrixLayoutCreate", fn: &a.cublasLtMatrixLayoutCreate},
		{name: "cublasLtMatrixLayoutDestroy", fn: &a.cublasLtMatrixLayoutDestroy},
		{name: "cublasLtMatmul", fn: &a.cublasLtMatmul},
		{name: "cublasLtMatmulPreferenceCreate", fn: &a.cublasLtMatmulPreferenceCreate, optional: true},
		{name: "cublasLtMatmulPreferenceDestroy", fn: &a.cublasLtMatmulPreferenceDestroy, optional: true},
		{name: "cublasLtMatmulPreferenceSetAttribute", fn: &a.cublasLtMatmulPreferenceSetAttribute, optional: true},
		{name: "cublasLtMatmulAlgoGetHeuristic", fn: &a.cublasLtMatmulAlgoGetHeuristic, optional: true},
	}
}

// heuristics reports whether the algorithm query is bound.
func (a *ltAPI) heuristics() bool {
	return need(a, "cublasLtMatmulPreferenceCreate", "cublasLtMatmulPreferenceDestroy",
		"cublasLtMatmulPreferenceSetAttribute", "cublasLtMatmulAlgoGetHeuristic") == nil
}

var ltLib struct {
	once sync.Once
	api  *ltAPI
	err  error
}

func loadCublasLt() (*ltAPI, error) {
	ltLib.once.Do(func() {
		path, h, err := openLib(cublasLtNames, nil) // sonames in probe.go
		if err != nil {
			ltLib.err = fmt.Errorf("cuda: cuBLASLt (libcublasLt.so.13/.12) not found; install the CUDA toolkit or nvidia-cublas, set SDBRIDGE_CUDA_LIB_DIR, or use --device cpu (%v)", err)
			return
		}
		a := &ltAPI{path: path}
		if ltLib.err = bindAll(path, h, a.syms()); ltLib.err == nil {
			ltLib.api = a
		}
	})
	return ltLib.api, ltLib.err
}

// Lt is a cuBLASLt handle bound to a device and its stream.
type Lt struct {
	dev     *Device
	api     *ltAPI
	h       uintptr
	ws      *Buffer // workspace (nil without heuristics)
	Path    string
	Version int

	mu    sync.Mutex
	plans map[ltKey]*ltPlan
}

// NewLt creates a cuBLASLt handle on d.
func (d *Device) NewLt() (*Lt, error) {
	a, err := loadCublasLt()
	if err != nil {
		return nil, err
	}
	lt := &Lt{dev: d, api: a, Path: a.path, plans: map[ltKey]*ltPlan{}}
	if a.cublasLtGetVersion != nil {
		lt.Version = int(a.cublasLtGetVersion())
	}
	if a.heuristics() {
		if lt.ws, err = d.Alloc(ltWorkspaceBytes); err != nil {
			return nil, fmt.Errorf("cuda: cuBLASLt workspace: %w", err)
		}
	}
	err = d.Do(func() error { return cublasCheck("cublasLtCreate", a.cublasLtCreate(&lt.h)) })
	if err != nil {
		return nil, errors.Join(err, lt.ws.Free())
	}
	return lt, nil
}

// Matmul is one row-major product for Lt.Matmul:
//
//	C[M, N] = act(Alpha op(A) op(B) + Beta C + Bias[N])
//
// A is [M, K] (TransA: [K, M]) with row stride LDA, B is [K, N] (TransB:
// [N, K], e.g. a Linear weight [out, in]) with row stride LDB, C is
// [M, N] with row stride LDC, all of element type Type (R16F or R32F),
// as is Bias ([N], required by the bias epilogues). Alpha 0 is taken as 1.
type Matmul struct {
	TransA, TransB bool
	M, N, K        int
	A              *Buffer
	LDA            int
	B              *Buffer
	LDB            int
	C              *Buffer
	LDC            int
	Bias           *Buffer
	Epilogue       Epilogue // 0: EpilogueNone
	Type           DataType
	Alpha, Beta    float32
}

// ltKey identifies a cached plan.
type ltKey struct {
	g   colGemm
	typ DataType
	ep  Epilogue
}

// ltPlan is a matmul descriptor, three layouts and the chosen algorithm.
type ltPlan struct {
	desc, la, lb, lc uintptr
	algo             [ltHeuristicResultBytes]byte
	hasAlgo          bool
}

// spanBytes returns the bytes a row-major [rows, cols] operand with row stride
// ld spans.
func spanBytes(rows, cols, ld int, t DataType) int { return ((rows-1)*ld + cols) * t.Size() }

// check validates p and returns its column-major form.
func (p *Matmul) check() (colGemm, error) {
	if p.Type != R16F && p.Type != R32F {
		return colGemm{}, fmt.Errorf("cuda: Lt matmul: element type %d (want R16F or R32F)", p.Type)
	}
	g, err := colMajorArgs(p.TransA, p.TransB, p.M, p.N, p.K, p.LDA, p.LDB, p.LDC)
	if err != nil {
		return colGemm{}, err
	}
	ar, ac := p.M, p.K
	if p.TransA {
		ar, ac = p.K, p.M
	}
	br, bc := p.K, p.N
	if p.TransB {
		br, bc = p.N, p.K
	}
	for _, o := range []struct {
		name           string
		b              *Buffer
		rows, cols, ld int
	}{{"A", p.A, ar, ac, p.LDA}, {"B", p.B, br, bc, p.LDB}, {"C", p.C, p.M, p.N, p.LDC}} {
		if o.b == nil {
			return colGemm{}, fmt.Errorf("cuda: Lt matmul: %s is nil", o.name)
		}
		if n := spanBytes(o.rows, o.cols, o.ld, p.Type); n > o.b.Size {
			return colGemm{}, fmt.Errorf("cuda: Lt matmul: %s [%d, %d] (row stride %d) needs %d bytes, buffer has %d", o.name, o.rows, o.cols, o.ld, n, o.b.Size)
		}
	}
	if p.Epilogue.hasBias() {
		if p.Bias == nil {
			return colGemm{}, fmt.Errorf("cuda: Lt matmul: epilogue %v without a bias", p.Epilogue)
		}
		if n := p.N * p.Type.Size(); n > p.Bias.Size {
			return colGemm{}, fmt.Errorf("cuda: Lt matmul: bias [%d] needs %d bytes, buffer has %d", p.N, n, p.Bias.Size)
		}
	} else if p.Bias != nil {
		return colGemm{}, fmt.Errorf("cuda: Lt matmul: a bias with epilogue %v (use EpilogueBias, EpilogueReLUBias or EpilogueGELUBias)", p.Epilogue)
	}
	return g, nil
}

// Matmul queues the product p on the device's stream.
func (lt *Lt) Matmul(p Matmul) error {
	if p.Epilogue == 0 {
		p.Epilogue = EpilogueNone
	}
	if p.Alpha == 0 {
		p.Alpha = 1
	}
	g, err := p.check()
	if err != nil {
		return err
	}
	lt.mu.Lock()
	defer lt.mu.Unlock()
	if lt.plans == nil {
		return errors.New("cuda: Lt matmul on a closed handle")
	}
	a := lt.api
	key := ltKey{g: g, typ: p.Type, ep: p.Epilogue}
	return lt.dev.Do(func() error {
		pl, ok := lt.plans[key]
		if !ok {
			var err error
			if pl, err = lt.plan(key); err != nil {
				return fmt.Errorf("cuda: Lt matmul plan m=%d n=%d k=%d %v: %w", p.M, p.N, p.K, p.Epilogue, err)
			}
			lt.plans[key] = pl
		}
		if p.Epilogue.hasBias() {
			ptr := p.Bias.Ptr
			if err := cublasCheck("cublasLtMatmulDescSetAttribute(BIAS_POINTER)", a.cublasLtMatmulDescSetAttribute(pl.desc, ltDescBiasPointer, unsafe.Pointer(&ptr), 8)); err != nil {
				return err
			}
		}
		var algo unsafe.Pointer
		var ws, wsSize uint64
		if pl.hasAlgo {
			algo = unsafe.Pointer(&pl.algo[0])
			ws, wsSize = lt.ws.Ptr, uint64(lt.ws.Size)
		}
		alpha, beta := p.Alpha, p.Beta
		// Column-major: first operand the caller's B, second the caller's A.
		r := a.cublasLtMatmul(lt.h, pl.desc, unsafe.Pointer(&alpha), p.B.Ptr, pl.la, p.A.Ptr, pl.lb,
			unsafe.Pointer(&beta), p.C.Ptr, pl.lc, p.C.Ptr, pl.lc, algo, ws, wsSize, lt.dev.stream)
		return cublasCheck("cublasLtMatmul", r)
	})
}

// plan creates the descriptors of key (on the device thread).
func (lt *Lt) plan(key ltKey) (*ltPlan, error) {
	a, g := lt.api, key.g
	pl := &ltPlan{}
	fail := func(err error) (*ltPlan, error) { return nil, errors.Join(err, lt.destroy(pl)) }
	if err := cublasCheck("cublasLtMatmulDescCreate", a.cublasLtMatmulDescCreate(&pl.desc, cublasCompute32F, int32(R32F))); err != nil {
		return nil, err
	}
	setI32 := func(name string, attr int32, v int32) error {
		return cublasCheck("cublasLtMatmulDescSetAttribute("+name+")", a.cublasLtMatmulDescSetAttribute(pl.desc, attr, unsafe.Pointer(&v), 4))
	}
	if err := errors.Join(setI32("TRANSA", ltDescTransA, g.opA), setI32("TRANSB", ltDescTransB, g.opB),
		setI32("EPILOGUE", ltDescEpilogue, int32(key.ep))); err != nil {
		return fail(err)
	}
	// Stored (pre-op) column-major shapes: op(X) is m x k for the first
	// operand, k x n for the second.
	rows := func(op int32, r, c int) (uint64, uint64) {
		if op == cublasOpN {
			return uint64(r), uint64(c)
		}
		return uint64(c), uint64(r)
	}
	ar, ac := rows(g.opA, g.m, g.k)
	br, bc := rows(g.opB, g.k, g.n)
	t := int32(key.typ)
	if err := cublasCheck("cublasLtMatrixLayoutCreate(A)", a.cublasLtMatrixLayoutCreate(&pl.la, t, ar, ac, int64(g.lda))); err != nil {
		return fail(err)
	}
	if err := cublasCheck("cublasLtMatrixLayoutCreate(B)", a.cublasLtMatrixLayoutCreate(&pl.lb, t, br, bc, int64(g.ldb))); err != nil {
		return fail(err)
	}
	if err := cublasCheck("cublasLtMatrixLayoutCreate(C)", a.cublasLtMatrixLayoutCreate(&pl.lc, t, uint64(g.m), uint64(g.n), int64(g.ldc))); err != nil {
		return fail(err)
	}
	if lt.ws != nil {
		if err := lt.pickAlgo(pl); err != nil {
			return fail(err)
		}
	}
	return pl, nil
}

// pickAlgo asks the heuristics for the best algorithm within the workspace.
func (lt *Lt) pickAlgo(pl *ltPlan) error {
	a := lt.api
	var pref uintptr
	if err := cublasCheck("cublasLtMatmulPreferenceCreate", a.cublasLtMatmulPreferenceCreate(&pref)); err != nil {
		return err
	}
	defer a.cublasLtMatmulPreferenceDestroy(pref)
	ws := uint64(lt.ws.Size)
	if err := cublasCheck("cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)",
		a.cublasLtMatmulPreferenceSetAttribute(pref, ltPrefMaxWorkspace, unsafe.Pointer(&ws), 8)); err != nil {
		return err
	}
	var n int32
	r := a.cublasLtMatmulAlgoGetHeuristic(lt.h, pl.desc, pl.la, pl.lb, pl.lc, pl.lc, pref, 1, unsafe.Pointer(&pl.algo[0]), &n)
	if err := cublasCheck("cublasLtMatmulAlgoGetHeuristic", r); err != nil {
		return err
	}
	if n < 1 {
		return errors.New("cuda: cuBLASLt has no algorithm for this matmul")
	}
	pl.hasAlgo = true
	return nil
}

// destroy frees a plan's descriptors (device thread).
func (lt *Lt) destroy(pl *ltPlan) error {
	a := lt.api
	var errs []error
	for _, l := range []uintptr{pl.la, pl.lb, pl.lc} {
		if l != 0 {
			errs = append(errs, cublasCheck("cublasLtMatrixLayoutDestroy", a.cublasLtMatrixLayoutDestroy(l)))
		}
	}
	if pl.desc != 0 {
		errs = append(errs, cublasCheck("cublasLtMatmulDescDestroy", a.cublasLtMatmulDescDestroy(pl.desc)))
	}
	return errors.Join(errs...)
}

// Linear queues y[rows, out] = act(x[rows, in] w[out, in]^T + bias[out])
// (PyTorch's Linear; bias nil with EpilogueNone, EpilogueReLU or
// EpilogueGELU), all of element type t.
func (lt *Lt) Linear(x, w, bias, y *Buffer, rows, in, out int, t DataType, ep Epilogue) error {
	return lt.Matmul(Matmul{TransB: true, M: rows, N: out, K: in, A: x, LDA: in, B: w, LDB: in, C: y, LDC: out, Bias: bias, Epilogue: ep, Type: t})
}

// Close destroys the cached plans, the handle and the workspace.
func (lt *Lt) Close() error {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	if lt.plans == nil {
		return nil
	}
	plans := lt.plans
	lt.plans = nil
	err := lt.dev.Do(func() error {
		var errs []error
		for _, pl := range plans {
			errs = append(errs, lt.destroy(pl))
		}
		return errors.Join(append(errs, cublasCheck("cublasLtDestroy", lt.api.cublasLtDestroy(lt.h)))...)
	})
	return errors.Join(err, lt.ws.Free())
}
