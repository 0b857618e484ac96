// cuda_text_test.go checks the text-model GPU ops (cuda_text.go) against their CPU twins on the stand-in CUDA
// libraries (kernels run by the CUDA C emulator), in fp32 (rel L2 <= 1e-5)
// and fp16 storage (inputs rounded to fp16 on both sides, rel L2 <= 2e-3).
// One child process runs every case (the driver loads once per process).
package nn

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/safetensors"
)

func TestTextOpsCUDA(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	out := cudatest.RunChild(t, "TestTextOpsCUDAChild", cudatest.Build(t))
	if testing.Verbose() {
		t.Log(out)
	}
}

// textDTypes are the storage dtypes checked, with their rel L2 bound.
var textDTypes = []struct {
	dt  GPUDType
	tol float64
}{{GPUF32, 1e-5}, {GPUF16, 2e-3}}

func TestTextOpsCUDAChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestTextOpsCUDA")
	}
	g, err := OpenGPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	g.Poison = true // an element no kernel wrote reads NaN and fails the check
	for _, d := range textDTypes {
		g.DType = d.dt
		t.Run(d.dt.String(), func(t *testing.T) {
			t.Run("embedding", func(t *testing.T) { checkEmbeddingCUDA(t, g, d.tol) })
			t.Run("rmsnorm", func(t *testing.T) { checkRMSNormCUDA(t, g, d.tol) })
			t.Run("activations", func(t *testing.T) { checkActivationsCUDA(t, g, d.tol) })
			t.Run("adanorm", func(t *testing.T) { checkAdaNormCUDA(t, g, d.tol) })
			t.Run("outer-rows", func(t *testing.T) { checkOuterRowsCUDA(t, g, d.tol) })
		})
	}
	t.Run("cast", func(t *testing.T) { checkCastCUDA(t, g) })
	t.Run("errors", func(t *testing.T) { checkTextOpErrorsCUDA(t, g) })
}

// textRand returns a tensor of normal values times scale, rounded to fp16
// when dt is GPUF16 (so CPU and GPU see the same inputs).
func textRand(seed uint64, dt GPUDType, scale float32, shape ...int) *Tensor {
	r := rand.New(rand.NewPCG(seed, 5))
	x := New(shape...) // [shape...]
	for i := range x.Data {
		x.Data[i] = float32(r.NormFloat64()) * scale
	}
	if dt == GPUF16 {
		for i, v := range x.Data {
			x.Data[i] = textRoundHalf(v)
		}
	}
	return x
}

func textRoundHalf(v float32) float32 {
	var o [1]float32
	safetensors.F16ToF32(o[:], []uint16{safetensors.F32ToF16(v)})
	return o[0]
}

// textRelL2 is ||got - want|| / ||want||; NaN or a size mismatch gives +Inf.
func textRelL2(got, want []float32) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	r := math.Sqrt(num / max(den, 1e-30))
	if math.IsNaN(r) {
		return math.Inf(1)
	}
	return r
}

func textUp(t *testing.T, g *GPU, x *Tensor) *GPUTensor {
	t.Helper()
	d, err := g.Upload(x)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Free() })
	return d
}

// textExpect downloads got, frees it, and compares it with want.
func textExpect(t *testing.T, got *GPUTensor, err error, want *Tensor, dt GPUDType, tol float64) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	defer got.Free()
	if got.DType != dt {
		t.Errorf("result dtype %s, want %s", got.DType, dt)
	}
	if !textSameInts(got.Shape, want.Shape) {
		t.Fatalf("shape %v, want %v", got.Shape, want.Shape)
	}
	h, err := got.Download()
	if err != nil {
		t.Fatal(err)
	}
	e := textRelL2(h.Data, want.Data)
	if !(e <= tol) {
		t.Errorf("rel L2 %.3g > %.g", e, tol)
	}
	t.Logf("%v: rel L2 %.3g (tol %.g)", want.Shape, e, tol)
}

func textSameInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func checkEmbeddingCUDA(t *testing.T, g *GPU, tol float64) {
	tab := textRand(1, g.DType, 1, 11, 40) // [V, C]
	pos := textRand(2, g.DType, 1, 9, 40)  // [P, C]
	ids := [][]int{{3, 0, 10, 7, 7}, {1, 2, 3, 4, 10}}
	for _, withPos := range []bool{false, true} {
		want := New(2, 5, 40) // [B, L, C]
		for n, row := range ids {
			for i, id := range row {
				for c := range 40 {
					v := tab.Data[id*40+c]
					if withPos {
						v += pos.Data[i*40+c]
					}
					want.Data[(n*5+i)*40+c] = v
				}
			}
		}
		var p *GPUTensor
		if withPos {
			p = textUp(t, g, pos)
		}
		got, err := g.Embedding(textUp(t, g, tab), ids, p)
		textExpect(t, got, err, want, g.DType, tol)
	}
}

func checkRMSNormCUDA(t *testing.T, g *GPU, tol float64) {
	for _, d := range []int{8, 300} {
		x := textRand(3, g.DType, 3, 2, 3, d) // [B, L, D]
		w := textRand(4, g.DType, 1, d)       // [D]
		const eps = 1e-6
		want := New(x.Shape...) // [B, L, D]
		for r := range 6 {
			var ss float64
			for _, v := range x.Data[r*d : (r+1)*d] {
				ss += float64(v) * float64(v)
			}
			inv := 1 / math.Sqrt(ss/float64(d)+eps)
			for i := range d {
				want.Data[r*d+i] = float32(float64(w.Data[i]) * float64(x.Data[r*d+i]) * inv)
			}
		}
		got, err := g.RMSNorm(textUp(t, g, x), textUp(t, g, w), eps)
		textExpect(t, got, err, want, g.DType, tol)
	}
}

func checkActivationsCUDA(t *testing.T, g *GPU, tol float64) {
	relu := func(x *Tensor) {
		for i, v := range x.Data {
			x.Data[i] = max(v, 0)
		}
	}
	sq := func(x *Tensor) {
		for i, v := range x.Data {
			x.Data[i] = max(v, 0) * max(v, 0)
		}
	}
	for _, tc := range []struct {
		act TextAct
		cpu func(*Tensor)
	}{
		{TextReLU, relu}, {TextGELU, GELU}, {TextGELUTanh, GELUTanh}, {TextQuickGELU, QuickGELU},
		{TextSiLU, SiLU}, {TextSquaredReLU, sq},
	} {
		t.Run(tc.act.String(), func(t *testing.T) {
			x := textRand(5, g.DType, 3, 3, 517)    // [R, N]
			gate := textRand(6, g.DType, 1, 3, 517) // [R, N]
			want := x.Clone()
			tc.cpu(want)
			xd := textUp(t, g, x)
			if err := g.Activate(xd, tc.act); err != nil {
				t.Fatal(err)
			}
			cp, err := g.Cast(xd, xd.DType) // [R, N] copy
			textExpect(t, cp, err, want, g.DType, tol)
			// gated: act(x) * gate, in place on a fresh copy
			want = Mul(want, gate)
			xd = textUp(t, g, x)
			if err := g.GatedActivate(xd, textUp(t, g, gate), tc.act); err != nil {
				t.Fatal(err)
			}
			cp, err = g.Cast(xd, xd.DType) // [R, N] copy
			textExpect(t, cp, err, want, g.DType, tol)
		})
	}
}

// textModulateCPU is models' modulate: x [Bx, L, W], mod [Bm, 2W] (shift,
// scale) broadcast to [max(Bx, Bm), L, W].
func textModulateCPU(x, mod *Tensor) *Tensor {
	bx, l, w := x.Shape[0], x.Shape[1], x.Shape[2]
	bm := mod.Shape[0]
	bo := max(bx, bm)
	out := New(bo, l, w) // [Bo, L, W]
	for b := range bo {
		m := mod.Data[(b%bm)*2*w : (b%bm+1)*2*w]
		for i := range l {
			for c := range w {
				out.Data[(b*l+i)*w+c] = x.Data[((b%bx)*l+i)*w+c]*(1+m[w+c]) + m[c]
			}
		}
	}
	return out
}

func checkAdaNormCUDA(t *testing.T, g *GPU, tol float64) {
	for _, tc := range []struct {
		name   string
		bx, bm int
	}{{"same rows", 3, 3}, {"shared input", 1, 4}, {"shared modulation", 2, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			x := textRand(7, g.DType, 2, tc.bx, 5, 48)  // [Bx, L, W]
			mod := textRand(8, g.DType, 0.5, tc.bm, 96) // [Bm, 2W]
			ln := LayerNorm{Eps: 1e-6}
			got, err := g.AdaLayerNorm(textUp(t, g, x), textUp(t, g, mod), 1e-6)
			textExpect(t, got, err, textModulateCPU(ln.Forward(x), mod), g.DType, tol)
			got, err = g.Modulate(textUp(t, g, x), textUp(t, g, mod))
			textExpect(t, got, err, textModulateCPU(x, mod), g.DType, tol)
		})
	}
}

func checkOuterRowsCUDA(t *testing.T, g *GPU, tol float64) {
	a := textRand(9, g.DType, 1, 5, 24)     // [Q, W]
	rows := textRand(10, g.DType, 1, 3, 24) // [B, W]
	want := New(3, 5, 24)                   // [B, Q, W]
	for b := range 3 {
		for q := range 5 {
			for c := range 24 {
				want.Data[(b*5+q)*24+c] = a.Data[q*24+c] + rows.Data[b*24+c]
			}
		}
	}
	got, err := g.AddOuterRows(textUp(t, g, a), textUp(t, g, rows))
	textExpect(t, got, err, want, g.DType, tol)
}

func checkCastCUDA(t *testing.T, g *GPU) {
	x := New(7) // [7] halfway cases, overflow, a subnormal
	copy(x.Data, []float32{1, 1.0009765625 + 0.00048828125, -2.5e-7, 65504, 70000, -1e-3, 3.14159})
	g.DType = GPUF32
	xd := textUp(t, g, x)
	h, err := g.Cast(xd, GPUF16) // [7] fp16
	if err != nil {
		t.Fatal(err)
	}
	defer h.Free()
	back, err := g.Cast(h, GPUF32) // [7] fp32 again
	if err != nil {
		t.Fatal(err)
	}
	defer back.Free()
	got, err := back.Download() // [7]
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range x.Data {
		if w := textRoundHalf(v); got.Data[i] != w && !(math.IsInf(float64(w), 1) && math.IsInf(float64(got.Data[i]), 1)) {
			t.Errorf("cast of %g through fp16 = %g, want %g", v, got.Data[i], w)
		}
	}
}

func checkTextOpErrorsCUDA(t *testing.T, g *GPU) {
	g.DType = GPUF32
	tab := textUp(t, g, New(4, 3))  // [V, C]
	x := textUp(t, g, New(2, 3, 8)) // [B, L, D]
	for _, tc := range []struct {
		name, want string
		run        func() (*GPUTensor, error)
	}{
		{"id out of range", "outside the table", func() (*GPUTensor, error) { return g.Embedding(tab, [][]int{{0, 4}}, nil) }},
		{"ragged ids", "row 1 has 1 ids", func() (*GPUTensor, error) { return g.Embedding(tab, [][]int{{0, 1}, {2}}, nil) }},
		{"rmsnorm weight", "weight", func() (*GPUTensor, error) { return g.RMSNorm(x, tab, 1e-6) }},
		{"modulation width", "modulation", func() (*GPUTensor, error) { return g.Modulate(x, textUp(t, g, New(2, 8))) }},
		{"mixed dtypes", "mixed dtypes", func() (*GPUTensor, error) {
			h, err := g.UploadAs(New(8), GPUF16)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Free()
			return g.RMSNorm(x, h, 1e-6)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y, err := tc.run()
			if err == nil {
				y.Free()
				t.Fatalf("no error, want one containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}
