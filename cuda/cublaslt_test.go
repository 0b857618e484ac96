// cublaslt_test.go: the cuBLASLt wrapper without a library. Argument
// checks, then the whole call path (plans, layouts, operand swap, bias
// pointer, heuristics, workspace) against a Go model of cuBLASLt's
// column-major semantics on fake device addresses, compared with a plain
// row-major reference. The library itself is exercised against the
// stand-in in runtime_fake_test.go.
package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"unsafe"
)

func TestLtMatmulCheck(t *testing.T) {
	buf := func(n int) *Buffer { return &Buffer{Ptr: 1 << 20, Size: n} }
	ok := Matmul{M: 2, N: 3, K: 4, A: buf(32), LDA: 4, B: buf(48), LDB: 3, C: buf(24), LDC: 3, Type: R32F}
	tests := []struct {
		name string
		edit func(*Matmul)
		want string
	}{
		{"valid", func(*Matmul) {}, ""},
		{"valid fp16 with bias", func(p *Matmul) {
			p.Type, p.Epilogue, p.Bias = R16F, EpilogueGELUBias, buf(6)
		}, ""},
		{"bf16", func(p *Matmul) { p.Type = R16BF }, "element type 14"},
		{"lda too small", func(p *Matmul) { p.LDA = 3 }, "leading dimensions"},
		{"A short", func(p *Matmul) { p.A = buf(31) }, "A [2, 4] (row stride 4) needs 32 bytes, buffer has 31"},
		{"B transposed short", func(p *Matmul) { p.TransB, p.LDB, p.B = true, 4, buf(47) }, "B [3, 4] (row stride 4) needs 48 bytes, buffer has 47"},
		{"C padded rows", func(p *Matmul) { p.LDC = 8 }, "C [2, 3] (row stride 8) needs 44 bytes, buffer has 24"},
		{"nil B", func(p *Matmul) { p.B = nil }, "B is nil"},
		{"bias missing", func(p *Matmul) { p.Epilogue = EpilogueBias }, "epilogue bias without a bias"},
		{"bias short", func(p *Matmul) { p.Epilogue, p.Bias = EpilogueReLUBias, buf(8) }, "bias [3] needs 12 bytes"},
		{"bias unused", func(p *Matmul) { p.Epilogue, p.Bias = EpilogueGELU, buf(12) }, "a bias with epilogue gelu"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := ok
			tt.edit(&p)
			if p.Epilogue == 0 {
				p.Epilogue = EpilogueNone
			}
			_, err := p.check()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want %q", err, tt.want)
			}
		})
	}
}

// ltModel is a Go model of cuBLASLt over fake device memory: addresses
// name float32 slices.
type ltModel struct {
	mem     map[uint64][]float32
	next    uintptr
	descs   map[uintptr]*modelDesc
	layouts map[uintptr][4]int64 // type, rows, cols, ld
	calls   int
	algos   int // heuristic queries
	sawAlgo bool
	sawWS   uint64
}

type modelDesc struct {
	transA, transB, epi int32
	bias                uint64
}

func (f *ltModel) alloc(v []float32) *Buffer {
	addr := uint64(len(f.mem)+1) << 32
	f.mem[addr] = v
	return &Buffer{Ptr: addr, Size: 4 * len(v), view: true}
}

func (f *ltModel) handle() uintptr { f.next++; return f.next }

func (f *ltModel) api() *ltAPI {
	a := &ltAPI{path: "go-model"}
	a.cublasLtCreate = func(h *uintptr) int32 { *h = f.handle(); return 0 }
	a.cublasLtDestroy = func(uintptr) int32 { return 0 }
	a.cublasLtMatmulDescCreate = func(d *uintptr, compute, scale int32) int32 {
		if compute != cublasCompute32F || scale != int32(R32F) {
			return 15
		}
		*d = f.handle()
		f.descs[*d] = &modelDesc{epi: int32(EpilogueNone)}
		return 0
	}
	a.cublasLtMatmulDescDestroy = func(d uintptr) int32 { delete(f.descs, d); return 0 }
	a.cublasLtMatmulDescSetAttribute = func(d uintptr, attr int32, buf unsafe.Pointer, size uint64) int32 {
		ds := f.descs[d]
		switch {
		case attr == ltDescTransA && size == 4:
			ds.transA = *(*int32)(buf)
		case attr == ltDescTransB && size == 4:
			ds.transB = *(*int32)(buf)
		case attr == ltDescEpilogue && size == 4:
			ds.epi = *(*int32)(buf)
		case attr == ltDescBiasPointer && size == 8:
			ds.bias = *(*uint64)(buf)
		default:
			return 7
		}
		return 0
	}
	a.cublasLtMatrixLayoutCreate = func(l *uintptr, typ int32, rows, cols uint64, ld int64) int32 {
		if ld < int64(rows) {
			return 7 // column-major: ld >= rows
		}
		*l = f.handle()
		f.layouts[*l] = [4]int64{int64(typ), int64(rows), int64(cols), ld}
		return 0
	}
	a.cublasLtMatrixLayoutDestroy = func(l uintptr) int32 { delete(f.layouts, l); return 0 }
	a.cublasLtMatmul = func(h, desc uintptr, alpha unsafe.Pointer, pa uint64, adesc uintptr, pb uint64, bdesc uintptr, beta unsafe.Pointer,
		pc uint64, cdesc uintptr, pd uint64, ddesc uintptr, algo unsafe.Pointer, ws, wsSize uint64, stream uintptr) int32 {
		f.calls++
		f.sawAlgo, f.sawWS = algo != nil, ws
		ds, la, lb, lc, ld := f.descs[desc], f.layouts[adesc], f.layouts[bdesc], f.layouts[cdesc], f.layouts[ddesc]
		if pc != pd || lc != ld {
			return 7
		}
		m, n := lc[1], lc[2]
		ar, ac := la[1], la[2]
		if ds.transA == cublasOpT {
			ar, ac = ac, ar
		}
		br, bc := lb[1], lb[2]
		if ds.transB == cublasOpT {
			br, bc = bc, br
		}
		if ar != m || bc != n || ac != br {
			return 7 // op(A) m x k, op(B) k x n
		}
		A, B, C := f.mem[pa], f.mem[pb], f.mem[pc]
		at := func(x []float32, ld int64, op int32, i, j int64) float64 {
			if op == cublasOpT {
				return float64(x[j+i*ld])
			}
			return float64(x[i+j*ld])
		}
		al, be := float64(*(*float32)(alpha)), float64(*(*float32)(beta))
		out := make([]float32, len(C))
		copy(out, C)
		for j := range n {
			for i := range m {
				var s float64
				for p := range ac {
					s += at(A, la[3], ds.transA, i, p) * at(B, lb[3], ds.transB, p, j)
				}
				v := al*s + be*float64(C[i+j*lc[3]])
				if Epilogue(ds.epi).hasBias() {
					v += float64(f.mem[ds.bias][i])
				}
				v = applyAct(Epilogue(ds.epi), v)
				out[i+j*lc[3]] = float32(v)
			}
		}
		copy(C, out)
		return 0
	}
	return a
}

// applyAct is the epilogue's activation (cuBLASLt's GELU is the tanh form).
func applyAct(e Epilogue, v float64) float64 {
	switch e {
	case EpilogueReLU, EpilogueReLUBias:
		return math.Max(v, 0)
	case EpilogueGELU, EpilogueGELUBias:
		return 0.5 * v * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(v+0.044715*v*v*v)))
	}
	return v
}

// rowMajorRef is C[M, N] = act(alpha op(A) op(B) + beta C + bias) row-major.
func rowMajorRef(p Matmul, a, b, c, bias []float32) []float32 {
	out := make([]float32, len(c))
	copy(out, c)
	alpha := p.Alpha
	if alpha == 0 {
		alpha = 1
	}
	for i := range p.M {
		for j := range p.N {
			var s float64
			for k := range p.K {
				ai, bi := i*p.LDA+k, k*p.LDB+j
				if p.TransA {
					ai = k*p.LDA + i
				}
				if p.TransB {
					bi = j*p.LDB + k
				}
				av, bv := a[ai], b[bi]
				s += float64(av) * float64(bv)
			}
			v := float64(alpha)*s + float64(p.Beta)*float64(c[i*p.LDC+j])
			if bias != nil {
				v += float64(bias[j])
			}
			out[i*p.LDC+j] = float32(applyAct(p.Epilogue, v))
		}
	}
	return out
}

func randSlice(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

// workerDevice is a Device with a Do loop and no driver (for Go models).
func workerDevice(t *testing.T) *Device {
	d := &Device{api: &driverAPI{path: "none"}, work: make(chan func())}
	go func() {
		for fn := range d.work {
			fn()
		}
	}()
	t.Cleanup(func() { close(d.work) })
	return d
}

func TestLtRowMajorOnModel(t *testing.T) {
	for _, heuristics := range []bool{false, true} {
		t.Run(fmt.Sprintf("heuristics=%v", heuristics), func(t *testing.T) {
			f := &ltModel{mem: map[uint64][]float32{}, descs: map[uintptr]*modelDesc{}, layouts: map[uintptr][4]int64{}}
			api := f.api()
			ws := &Buffer{Ptr: 0xabc000, Size: ltWorkspaceBytes, view: true}
			if heuristics {
				api.cublasLtMatmulPreferenceCreate = func(p *uintptr) int32 { *p = f.handle(); return 0 }
				api.cublasLtMatmulPreferenceDestroy = func(uintptr) int32 { return 0 }
				api.cublasLtMatmulPreferenceSetAttribute = func(p uintptr, attr int32, buf unsafe.Pointer, size uint64) int32 {
					if attr != ltPrefMaxWorkspace || size != 8 || *(*uint64)(buf) != ltWorkspaceBytes {
						return 7
					}
					return 0
				}
				api.cublasLtMatmulAlgoGetHeuristic = func(h, desc, a, b, c, d, pref uintptr, req int32, res unsafe.Pointer, n *int32) int32 {
					f.algos++
					*n = 1
					return 0
				}
			}
			if api.heuristics() != heuristics {
				t.Fatalf("heuristics() = %v", !heuristics)
			}
			lt := &Lt{dev: workerDevice(t), api: api, h: 1, plans: map[ltKey]*ltPlan{}}
			if heuristics {
				lt.ws = ws
			}
			r := rand.New(rand.NewPCG(1, 2))
			for _, tc := range []struct {
				ta, tb  bool
				m, n, k int
				pad     int
				ep      Epilogue
				beta    float32
			}{
				{false, false, 3, 5, 4, 0, EpilogueNone, 0},
				{false, true, 7, 6, 5, 0, EpilogueBias, 0},
				{true, false, 4, 3, 6, 2, EpilogueReLUBias, 0.5},
				{true, true, 2, 9, 3, 1, EpilogueGELUBias, 0},
				{false, true, 5, 4, 8, 3, EpilogueGELU, -1},
				{false, true, 7, 6, 5, 0, EpilogueBias, 0}, // same shape again: cached plan
			} {
				p := Matmul{TransA: tc.ta, TransB: tc.tb, M: tc.m, N: tc.n, K: tc.k, Epilogue: tc.ep, Type: R32F, Beta: tc.beta, Alpha: 0.75}
				ar, ac := tc.m, tc.k
				if tc.ta {
					ar, ac = tc.k, tc.m
				}
				br, bc := tc.k, tc.n
				if tc.tb {
					br, bc = tc.n, tc.k
				}
				p.LDA, p.LDB, p.LDC = ac+tc.pad, bc+tc.pad, tc.n+tc.pad
				a, b, c := randSlice(r, ar*p.LDA), randSlice(r, br*p.LDB), randSlice(r, tc.m*p.LDC)
				var bias []float32
				if tc.ep.hasBias() {
					bias = randSlice(r, tc.n)
					p.Bias = f.alloc(bias)
				}
				want := rowMajorRef(p, a, b, c, bias)
				p.A, p.B, p.C = f.alloc(a), f.alloc(b), f.alloc(c)
				if err := lt.Matmul(p); err != nil {
					t.Fatalf("%+v: %v", tc, err)
				}
				got := f.mem[p.C.Ptr]
				for i := range want {
					if d := math.Abs(float64(got[i] - want[i])); d > 1e-5*(1+math.Abs(float64(want[i]))) {
						t.Fatalf("%+v: C[%d] = %g, want %g", tc, i, got[i], want[i])
					}
				}
				if f.sawAlgo != heuristics || (heuristics && f.sawWS != ws.Ptr) || (!heuristics && f.sawWS != 0) {
					t.Fatalf("algo passed %v, workspace %#x (heuristics %v)", f.sawAlgo, f.sawWS, heuristics)
				}
			}
			if len(lt.plans) != 5 || (heuristics && f.algos != 5) {
				t.Fatalf("%d plans, %d heuristic queries for 5 shapes", len(lt.plans), f.algos)
			}
			// Linear: y[rows, out] = x[rows, in] w[out, in]^T + bias.
			x, w, bias := randSlice(r, 3*4), randSlice(r, 2*4), randSlice(r, 2)
			y := f.alloc(make([]float32, 3*2))
			if err := lt.Linear(f.alloc(x), f.alloc(w), f.alloc(bias), y, 3, 4, 2, R32F, EpilogueBias); err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				for o := range 2 {
					want := float64(bias[o])
					for k := range 4 {
						want += float64(x[i*4+k]) * float64(w[o*4+k])
					}
					if got := f.mem[y.Ptr][i*2+o]; math.Abs(float64(got)-want) > 1e-5 {
						t.Fatalf("Linear y[%d,%d] = %g, want %g", i, o, got, want)
					}
				}
			}
			if err := lt.Close(); err != nil {
				t.Fatal(err)
			}
			if len(f.descs) != 0 || len(f.layouts) != 0 {
				t.Fatalf("Close left %d descriptors and %d layouts", len(f.descs), len(f.layouts))
			}
			if err := lt.Matmul(Matmul{M: 1, N: 1, K: 1, A: y, LDA: 1, B: y, LDB: 1, C: y, LDC: 1, Type: R32F}); err == nil {
				t.Fatal("Matmul after Close accepted")
			}
		})
	}
}
