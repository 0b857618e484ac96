// kernels_test.go: every fast kernel checked against its reference loop in
// ref_test.go on odd sizes (|got-want| <= atol + rtol*|want|), on both GEMM
// backends and every micro-kernel this CPU can run.
package nn

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func randSlice(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64())
	}
	return s
}

func randTensor(r *rand.Rand, shape ...int) *Tensor {
	return From(randSlice(r, numel(shape)), shape...)
}

// assertClose fails with the first bad index and the max difference.
func assertClose(t *testing.T, got, want []float32, atol, rtol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("length: got %d, want %d", len(got), len(want))
	}
	bad, maxd := -1, 0.0
	for i := range want {
		d := math.Abs(float64(got[i]) - float64(want[i]))
		if math.IsNaN(float64(got[i])) != math.IsNaN(float64(want[i])) {
			d = math.Inf(1)
		}
		if d > maxd {
			maxd = d
		}
		if d > atol+rtol*math.Abs(float64(want[i])) && bad < 0 {
			bad = i
		}
	}
	if bad >= 0 {
		t.Fatalf("index %d: got %v, want %v (max |diff| %.3g over %d values)", bad, got[bad], want[bad], maxd, len(want))
	}
}

// backends runs f once per GEMM backend available here.
func backends(t *testing.T, f func(t *testing.T)) {
	t.Run("dispatch", f)
	kerns := availableKernels()
	saved, savedOK := kern, blas.ok
	defer func() { kern, blas.ok = saved, savedOK }()
	blasOK()
	if openBLASLib() { // loaded, whatever the default backend is
		blas.ok = true
		t.Run("openblas", f)
	}
	blas.ok = false
	for _, k := range kerns {
		kern = k
		t.Run("go-"+k.name, f)
		if k.fnA != nil {
			saved := gemmDirectAMaxN
			gemmDirectAMaxN = 1 << 30 // A read in place wherever possible
			t.Run("go-"+k.name+"-directA", f)
			gemmDirectAMaxN = saved
		}
	}
}

func TestGemm(t *testing.T) {
	cases := []struct {
		m, n, k          int
		ta, tb           bool
		alpha, beta      float32
		padA, padB, padC int
	}{
		{1, 1, 1, false, false, 1, 0, 0, 0, 0},
		{3, 5, 7, false, false, 1, 0, 0, 0, 0},
		{7, 3, 5, true, false, 0.5, 0, 1, 2, 3},
		{17, 33, 65, false, true, 1, 1, 0, 0, 0},
		{33, 17, 9, true, true, -2, 0.25, 3, 0, 1},
		{100, 257, 300, false, false, 1, 0, 0, 0, 0},
		{257, 100, 300, false, true, 1, 1, 5, 0, 2},
		{200, 2100, 40, false, false, 1, 0, 0, 0, 0},
		{13, 4100, 17, false, true, 0.125, 0, 0, 0, 0},
		{300, 31, 520, true, false, 1, -1, 0, 7, 0},
		{64, 64, 64, true, true, 1, 0, 0, 0, 0},
		// narrow products: A read in place by the kernel
		{50, 40, 4100, false, false, 1, 0, 3, 1, 2},
		{37, 64, 300, false, true, 1, 1, 0, 5, 0},
		{24, 8, 1000, false, false, 1, 0.5, 0, 0, 0},
		{13, 1, 3, false, false, 1, 0, 0, 0, 0},
		// few rows times a wide B^T: computed as C^T = B A^T
		{2, 1280, 320, false, true, 1, 0, 0, 0, 0},
		{7, 700, 900, false, true, 0.5, 0.25, 2, 3, 4},
		{30, 2000, 1300, false, true, 1, 1, 0, 0, 0},
	}
	backends(t, func(t *testing.T) {
		for _, tc := range cases {
			name := fmt.Sprintf("%dx%dx%d_tA%v_tB%v_a%v_b%v", tc.m, tc.n, tc.k, tc.ta, tc.tb, tc.alpha, tc.beta)
			t.Run(name, func(t *testing.T) {
				r := rand.New(rand.NewPCG(1, 2))
				ar, ac := tc.m, tc.k
				if tc.ta {
					ar, ac = tc.k, tc.m
				}
				br, bc := tc.k, tc.n
				if tc.tb {
					br, bc = tc.n, tc.k
				}
				lda, ldb, ldc := ac+tc.padA, bc+tc.padB, tc.n+tc.padC
				a := randSlice(r, ar*lda)
				b := randSlice(r, br*ldb)
				c := randSlice(r, tc.m*ldc)
				want := append([]float32(nil), c...)
				refGemm(tc.ta, tc.tb, tc.m, tc.n, tc.k, tc.alpha, a, lda, b, ldb, tc.beta, want, ldc)
				Gemm(tc.ta, tc.tb, tc.m, tc.n, tc.k, tc.alpha, a, lda, b, ldb, tc.beta, c, ldc)
				tol := 1e-5 * math.Sqrt(float64(tc.k))
				assertClose(t, c, want, tol, 1e-5)
			})
		}
	})
}

func TestGemmSerial(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	m, n, k := 70, 90, 110
	a, b := randSlice(r, m*k), randSlice(r, k*n)
	got, want := make([]float32, m*n), make([]float32, m*n)
	refGemm(false, false, m, n, k, 1, a, k, b, n, 0, want, n)
	gemmSerial(false, false, m, n, k, 1, a, k, b, n, 0, got, n)
	assertClose(t, got, want, 1e-4, 1e-5)
}

func TestLinear(t *testing.T) {
	cases := []struct {
		shape   []int
		in, out int
		bias    bool
	}{
		{[]int{3, 5}, 5, 7, true},
		{[]int{2, 77, 64}, 64, 96, true},
		{[]int{2, 9, 33}, 33, 17, false},
	}
	backends(t, func(t *testing.T) {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%v_%d_%v", tc.shape, tc.out, tc.bias), func(t *testing.T) {
				r := rand.New(rand.NewPCG(5, 6))
				l := &Linear{Weight: randTensor(r, tc.out, tc.in)}
				if tc.bias {
					l.Bias = randTensor(r, tc.out)
				}
				x := randTensor(r, tc.shape...)
				want := refLinear(l, x)
				got := l.Forward(x)
				if fmt.Sprint(got.Shape) != fmt.Sprint(want.Shape) {
					t.Fatalf("shape %v, want %v", got.Shape, want.Shape)
				}
				assertClose(t, got.Data, want.Data, 1e-4, 1e-4)
			})
		}
	})
}

func TestConv2d(t *testing.T) {
	cases := []struct {
		b, ic, h, w, oc, k, s, p int
		bias                     bool
		budget                   int
	}{
		{1, 3, 5, 7, 4, 3, 1, 1, true, 0},
		{2, 5, 9, 8, 6, 3, 2, 1, true, 0},
		{2, 5, 8, 8, 6, 3, 2, 1, false, 0},
		{1, 4, 9, 9, 3, 3, 2, 0, true, 0},
		{2, 7, 6, 5, 9, 1, 1, 0, true, 0},
		{1, 8, 12, 13, 16, 3, 1, 1, true, 100}, // forced im2col chunking
		{1, 6, 11, 10, 5, 3, 2, 1, true, 60},
		{1, 4, 6, 6, 3, 1, 2, 0, false, 0},
		{2, 32, 16, 16, 40, 3, 1, 1, true, 0},
		{1, 3, 4, 5, 2, 3, 1, 3, true, 0}, // padding wider than the kernel reach
		{1, 2, 3, 3, 2, 1, 1, 2, false, 0},
	}
	backends(t, func(t *testing.T) {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%dx%dx%dx%d_o%d_k%d_s%d_p%d_b%d", tc.b, tc.ic, tc.h, tc.w, tc.oc, tc.k, tc.s, tc.p, tc.budget), func(t *testing.T) {
				if tc.budget > 0 {
					saved := convColsBudget
					convColsBudget = tc.budget
					defer func() { convColsBudget = saved }()
				}
				r := rand.New(rand.NewPCG(7, 8))
				c := &Conv2d{Weight: randTensor(r, tc.oc, tc.ic, tc.k, tc.k), Stride: tc.s, Padding: tc.p}
				if tc.bias {
					c.Bias = randTensor(r, tc.oc)
				}
				x := randTensor(r, tc.b, tc.ic, tc.h, tc.w)
				want := refConv2d(c, x)
				got := c.Forward(x)
				if fmt.Sprint(got.Shape) != fmt.Sprint(want.Shape) {
					t.Fatalf("shape %v, want %v", got.Shape, want.Shape)
				}
				assertClose(t, got.Data, want.Data, 1e-4, 1e-4)
			})
		}
	})
}

func TestGroupNorm(t *testing.T) {
	cases := []struct {
		shape  []int
		groups int
	}{
		{[]int{1, 4, 3, 5}, 2},
		{[]int{2, 32, 8, 8}, 32},
		{[]int{2, 64, 17, 9}, 32},
		{[]int{3, 6, 7}, 3},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.shape, tc.groups), func(t *testing.T) {
			r := rand.New(rand.NewPCG(9, 10))
			c := tc.shape[1]
			g := &GroupNorm{Groups: tc.groups, Eps: 1e-6, Weight: randTensor(r, c), Bias: randTensor(r, c)}
			x := randTensor(r, tc.shape...)
			for i := range x.Data {
				x.Data[i] = 3 + 2*x.Data[i] // non-zero mean
			}
			want := refGroupNorm(g, x)
			assertClose(t, g.Forward(x).Data, want.Data, 1e-5, 1e-5)
			ws := want.Clone()
			for i, v := range ws.Data {
				ws.Data[i] = refSiLU(v)
			}
			assertClose(t, g.ForwardSiLU(x).Data, ws.Data, 1e-5, 1e-5)
			xi := x.Clone()
			g.ForwardInPlace(xi, false)
			assertClose(t, xi.Data, want.Data, 1e-5, 1e-5)
		})
	}
}

func TestLayerNorm(t *testing.T) {
	cases := []struct {
		shape  []int
		affine bool
	}{
		{[]int{3, 7}, true},
		{[]int{2, 77, 768}, true},
		{[]int{5, 33}, false},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.shape, tc.affine), func(t *testing.T) {
			r := rand.New(rand.NewPCG(11, 12))
			c := tc.shape[len(tc.shape)-1]
			l := &LayerNorm{Eps: 1e-5}
			if tc.affine {
				l.Weight, l.Bias = randTensor(r, c), randTensor(r, c)
			}
			x := randTensor(r, tc.shape...)
			want := refLayerNorm(l, x)
			assertClose(t, l.Forward(x).Data, want.Data, 1e-5, 1e-5)
		})
	}
}

func TestActivations(t *testing.T) {
	cases := []struct {
		name string
		fast func(*Tensor)
		ref  func(float32) float32
	}{
		{"SiLU", SiLU, refSiLU},
		{"GELU", GELU, refGELU},
		{"GELUTanh", GELUTanh, refGELUTanh},
		{"QuickGELU", QuickGELU, refQuickGELU},
	}
	for _, tc := range cases {
		for _, n := range []int{1, 7, 100003} {
			t.Run(fmt.Sprint(tc.name, n), func(t *testing.T) {
				r := rand.New(rand.NewPCG(13, 14))
				x := randTensor(r, n)
				for i := range x.Data {
					x.Data[i] *= 6
				}
				if n > 10 {
					copy(x.Data, []float32{0, -100, 100, -90, 90, 1e-8, -1e-8})
				}
				want := make([]float32, n)
				for i, v := range x.Data {
					want[i] = tc.ref(v)
				}
				tc.fast(x)
				assertClose(t, x.Data, want, 1e-6, 1e-5)
			})
		}
	}
}

func TestExpf(t *testing.T) {
	for x := float32(-87); x < 88; x += 0.0137 {
		got, want := expf(x), float32(math.Exp(float64(x)))
		if math.Abs(float64(got-want)) > 3e-7*float64(want) {
			t.Fatalf("expf(%v) = %v, want %v", x, got, want)
		}
	}
	if expf(-1000) != 0 || !math.IsInf(float64(expf(1000)), 1) {
		t.Fatalf("expf limits: %v %v", expf(-1000), expf(1000))
	}
}

func TestSoftmax(t *testing.T) {
	for _, n := range []int{1, 5, 77, 4096} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			r := rand.New(rand.NewPCG(15, 16))
			x := randSlice(r, 13*n)
			for i := range x {
				x[i] *= 10
			}
			x[0] = -1e30 // a masked-style entry
			want := append([]float32(nil), x...)
			refSoftmax(want, n)
			Softmax(x, n)
			assertClose(t, x, want, 1e-7, 1e-5)
		})
	}
}

func TestAttention(t *testing.T) {
	cases := []struct {
		b, lq, lk, heads, d int
		bias                []int // nil or [1|B, H|1]
		noScale             bool
		scale               float32
	}{
		{1, 3, 5, 1, 4, nil, false, 0},
		{2, 16, 16, 2, 8, nil, false, 0},
		{2, 300, 77, 2, 40, nil, false, 0},
		{1, 513, 513, 2, 16, nil, false, 0},
		{2, 9, 9, 3, 64, []int{1, 3}, true, 0},
		{2, 11, 7, 2, 64, []int{2, 2}, true, 0},
		{2, 11, 7, 2, 96, []int{2, 1}, false, 0.3},
		{1, 37, 29, 1, 80, nil, false, 0},
		{1, 20, 12, 2, 160, nil, false, 0},
	}
	backends(t, func(t *testing.T) {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("b%d_q%d_k%d_h%d_d%d_bias%v", tc.b, tc.lq, tc.lk, tc.heads, tc.d, tc.bias), func(t *testing.T) {
				r := rand.New(rand.NewPCG(17, 18))
				c := tc.heads * tc.d
				q, k, v := randTensor(r, tc.b, tc.lq, c), randTensor(r, tc.b, tc.lk, c), randTensor(r, tc.b, tc.lk, c)
				opt := AttentionOpts{NoScale: tc.noScale, Scale: tc.scale}
				if tc.bias != nil {
					opt.Bias = randTensor(r, tc.bias[0], tc.bias[1], tc.lq, tc.lk)
					opt.Bias.Data[0] = -1e9 // a masked position
					for j := range tc.lk {  // a fully masked row: NaN, as torch
						opt.Bias.Data[tc.lk+j] = float32(math.Inf(-1))
					}
				}
				want := refAttention(q, k, v, tc.heads, opt)
				got := ScaledDotProductAttention(q, k, v, tc.heads, opt)
				assertClose(t, got.Data, want.Data, 1e-5, 1e-4)
			})
		}
	})
}

func TestLayouts(t *testing.T) {
	for _, sh := range [][]int{{1, 3, 2, 5}, {2, 37, 33, 35}, {2, 64, 8, 8}} {
		t.Run(fmt.Sprint(sh), func(t *testing.T) {
			r := rand.New(rand.NewPCG(19, 20))
			x := randTensor(r, sh...)
			cl := ChannelsLast(x)
			assertClose(t, cl.Data, refChannelsLast(x).Data, 0, 0)
			cf := ChannelsFirst(cl, sh[2], sh[3])
			assertClose(t, cf.Data, refChannelsFirst(cl, sh[2], sh[3]).Data, 0, 0)
			assertClose(t, cf.Data, x.Data, 0, 0)
			assertClose(t, UpsampleNearest2x(x).Data, refUpsampleNearest2x(x).Data, 0, 0)
		})
	}
}

func TestGEGLUAndElementwise(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	x := randTensor(r, 2, 5, 2*37)
	parts := Split(x, 37, 37)
	want := make([]float32, len(parts[0].Data))
	for i := range want {
		want[i] = parts[0].Data[i] * refGELU(parts[1].Data[i])
	}
	assertClose(t, GEGLU(x).Data, want, 1e-6, 1e-5)
	back := Concat(-1, parts[0], parts[1])
	assertClose(t, back.Data, x.Data, 0, 0)

	a, b := randTensor(r, 3, 50001), randTensor(r, 3, 50001)
	sum, prod := make([]float32, len(a.Data)), make([]float32, len(a.Data))
	for i := range sum {
		sum[i], prod[i] = a.Data[i]+b.Data[i], a.Data[i]*b.Data[i]
	}
	assertClose(t, Add(a, b).Data, sum, 0, 0)
	assertClose(t, Mul(a, b).Data, prod, 0, 0)
	ac := a.Clone()
	AddInPlace(ac, b)
	assertClose(t, ac.Data, sum, 0, 0)
	Scale(ac, 2)
	for i := range sum {
		sum[i] *= 2
	}
	assertClose(t, ac.Data, sum, 0, 0)

	y := randTensor(r, 2, 3, 4, 5)
	bias := randTensor(r, 2, 3)
	wantB := y.Clone()
	for i := range wantB.Data {
		wantB.Data[i] += bias.Data[i/20]
	}
	AddBatchChannelBias(y, bias)
	assertClose(t, y.Data, wantB.Data, 0, 0)
}

func TestVecHelpers(t *testing.T) {
	for _, n := range []int{1, 15, 16, 17, 33, 100, 4096} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			r := rand.New(rand.NewPCG(23, uint64(n)))
			x := randSlice(r, n)
			for i := range x {
				x[i] *= 20
			}
			x[0] = -95
			if n > 1 {
				x[1] = 95
			}
			if got, want := vecMax(x), vecMaxGo(x); got != want {
				t.Fatalf("vecMax = %v, want %v", got, want)
			}
			got, want := make([]float32, n), make([]float32, n)
			vecSiLUAffine(got, x, 0.7, 0.1)
			for i, v := range x {
				want[i] = refSiLU(v*0.7 + 0.1)
			}
			assertClose(t, got, want, 1e-6, 2e-6)
			vecAffine(got, x, 0.7, 0.1)
			vecAffineGo(want, x, 0.7, 0.1)
			assertClose(t, got, want, 1e-6, 1e-6) // FMA rounds once
			m := vecMax(x)
			e := append([]float32(nil), x...)
			s := vecExpSubSum(e, m)
			var ws float64
			for i, v := range x {
				want[i] = float32(math.Exp(float64(v - m)))
				ws += float64(want[i])
			}
			assertClose(t, e, want, 1e-30, 2e-6)
			if math.Abs(float64(s)-ws) > 1e-5*ws {
				t.Fatalf("exp sum %v, want %v", s, ws)
			}
			vecScale(e, 0.5)
			for i := range want {
				want[i] *= 0.5
			}
			assertClose(t, e, want, 1e-30, 2e-6)
		})
	}
}

func TestGemmBackend(t *testing.T) {
	got := GemmBackend()
	if !strings.HasPrefix(got, "openblas (") && !strings.HasPrefix(got, "go (") {
		t.Fatalf("GemmBackend() = %q, want openblas (...) or go (...)", got)
	}
	if GemmGoKernel() != kern.name || kern.name == "" {
		t.Fatalf("GemmGoKernel() = %q, kernel %q", GemmGoKernel(), kern.name)
	}
}

func TestGELUVector(t *testing.T) {
	for _, n := range []int{1, 16, 17, 255, 256, 257, 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			r := rand.New(rand.NewPCG(25, uint64(n)))
			g, h := randSlice(r, n), randSlice(r, n)
			for i := range g {
				g[i] *= 4
			}
			g[0] = -1.0001 // just below the exact-fallback threshold
			if n > 2 {
				g[1], g[2] = -0.9999, 12
			}
			want, wantG := make([]float32, n), make([]float32, n)
			for i, v := range g {
				wantG[i] = refGELU(v)
				want[i] = h[i] * wantG[i]
			}
			got := make([]float32, n)
			vecGEGLU(got, h, g)
			assertClose(t, got, want, 1e-6, 2e-6)
			inPlace := append([]float32(nil), g...)
			vecGELU(inPlace, inPlace)
			assertClose(t, inPlace, wantG, 1e-6, 2e-6)
		})
	}
}

func TestPackTransposed(t *testing.T) {
	for _, tc := range []struct{ w, ld, kc int }{{32, 40, 37}, {16, 100, 1}, {32, 200, 192}, {16, 17, 5}} {
		t.Run(fmt.Sprint(tc), func(t *testing.T) {
			r := rand.New(rand.NewPCG(27, 28))
			src := randSlice(r, tc.w*tc.ld)
			want, got := make([]float32, tc.w*tc.kc), make([]float32, tc.w*tc.kc)
			scatterPanel(want, tc.w, src, tc.ld, tc.w, tc.kc, 1)
			if !packTransposed(got, tc.w, src, tc.ld, tc.kc) {
				t.Skip("no vector packing on this CPU")
			}
			assertClose(t, got, want, 0, 0)
		})
	}
}
