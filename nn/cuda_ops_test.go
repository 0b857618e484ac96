// cuda_ops_test.go checks the GPU layer ops (cuda_ops.go, cuda_shape.go,
// cuda_attention.go) against the CPU functions of this package on the
// stand-in CUDA libraries, whose emulator runs the real CUDA C: fp32
// storage (rel L2 <= 1e-5) and fp16 storage (inputs rounded to fp16 on
// both sides, rel L2 <= 1e-2; the measured values are logged), with odd
// sizes (no multiple of 16 or 32) and every head dim the models use. One
// child process runs every case (the driver loads once per process).
package nn

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
)

func TestOpsCUDA(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	out := cudatest.RunChild(t, "TestOpsCUDAChild", cudatest.Build(t))
	if testing.Verbose() {
		t.Log(out)
	}
}

// opTol is the rel L2 bound per storage dtype.
var opTol = map[GPUDType]float64{GPUF32: 1e-5, GPUF16: 1e-2}

func TestOpsCUDAChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestOpsCUDA")
	}
	g, err := OpenGPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Arena == nil {
		t.Error("OpenGPU set no tensor arena")
	}
	g.Poison = true // an element no kernel wrote reads NaN and fails the check
	for _, dt := range []GPUDType{GPUF32, GPUF16} {
		g.DType = dt
		t.Run(dt.String(), func(t *testing.T) {
			t.Run("linear", func(t *testing.T) { checkLinearCUDA(t, g) })
			t.Run("conv", func(t *testing.T) { checkConvCUDA(t, g) })
			t.Run("norms", func(t *testing.T) { checkNormsCUDA(t, g) })
			t.Run("pointwise", func(t *testing.T) { checkPointwiseCUDA(t, g) })
			t.Run("shape", func(t *testing.T) { checkShapeCUDA(t, g) })
			t.Run("attention", func(t *testing.T) { checkAttentionCUDA(t, g) })
			t.Run("broadcast", func(t *testing.T) { checkBroadcastCUDA(t, g) })
		})
	}
	t.Run("arena", func(t *testing.T) { checkArenaCUDA(t, g) })
	t.Run("gemm-paths", func(t *testing.T) { checkGemmPathsCUDA(t, g) })
	t.Run("updown", func(t *testing.T) { checkUpDownCUDA(t, g) })
	t.Run("errors", func(t *testing.T) { checkOpErrorsCUDA(t, g) })
}

// gpuRand returns normal values times scale, rounded to fp16 when dt is
// GPUF16 (so the CPU reference sees the values the GPU holds).
func gpuRand(r *rand.Rand, dt GPUDType, scale float32, shape ...int) *Tensor {
	x := New(shape...)
	for i := range x.Data {
		x.Data[i] = float32(r.NormFloat64()) * scale
	}
	if dt == GPUF16 {
		fromHalves(x.Data, toHalves(x.Data))
	}
	return x
}

// gpuRelL2 is ||got - want|| / ||want|| (NaN anywhere gives +Inf).
func gpuRelL2(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		if math.IsNaN(float64(got[i])) {
			return math.Inf(1)
		}
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// up uploads x in the GPU's dtype or fails t.
func up(t *testing.T, g *GPU, x *Tensor) *GPUTensor {
	t.Helper()
	d, err := g.Upload(x)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Free() })
	return d
}

// expect downloads got and compares it with want within the dtype's bound.
func expect(t *testing.T, name string, got *GPUTensor, err error, want *Tensor) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if !slices.Equal(got.Shape, want.Shape) {
		t.Fatalf("%s: shape %v, want %v", name, got.Shape, want.Shape)
	}
	h, err := got.Download()
	if err != nil {
		t.Fatalf("%s: download: %v", name, err)
	}
	e := gpuRelL2(h.Data, want.Data)
	if e > opTol[got.DType] {
		t.Errorf("%s (%s): rel L2 %.3g > %.0e", name, got.DType, e, opTol[got.DType])
	} else {
		t.Logf("%s (%s): rel L2 %.3g", name, got.DType, e)
	}
}

// must fails t on err.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func checkLinearCUDA(t *testing.T, g *GPU) {
	r := rand.New(rand.NewPCG(1, 2))
	dt := g.DType
	for _, tc := range []struct {
		name    string
		shape   []int
		out     int
		hasBias bool
	}{{"bias", []int{2, 7, 24}, 13, true}, {"nobias", []int{5, 33}, 17, false}, {"row", []int{1, 1, 8}, 3, true}} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.shape[len(tc.shape)-1]
			x := gpuRand(r, dt, 1, tc.shape...)
			l := &Linear{Weight: gpuRand(r, dt, 0.3, tc.out, in)}
			if tc.hasBias {
				l.Bias = gpuRand(r, dt, 0.5, tc.out)
			}
			gx, gw := up(t, g, x), up(t, g, l.Weight)
			var gb *GPUTensor
			if l.Bias != nil {
				gb = up(t, g, l.Bias)
			}
			want := l.Forward(x)
			y, err := g.Linear(gx, gw, gb)
			expect(t, "Linear", y, err, want)
			// LinearAddInto: y += x W^T + b on top of the first result.
			must(t, g.LinearAddInto(y, gx, gw, gb))
			twice := want.Clone()
			AddInPlace(twice, want)
			expect(t, "LinearAddInto", y, nil, twice)
			y.Free()
		})
	}
}

func checkConvCUDA(t *testing.T, g *GPU) {
	algos := []ConvAlgo{ConvIm2col}
	if g.DType == GPUF16 {
		algos = append(algos, ConvImplicitGEMM)
	}
	for _, algo := range algos {
		t.Run(map[ConvAlgo]string{ConvIm2col: "im2col", ConvImplicitGEMM: "implicit"}[algo], func(t *testing.T) {
			g.ConvAlgo = algo
			defer func() { g.ConvAlgo = ConvIm2col }()
			checkConvAlgoCUDA(t, g)
		})
	}
	if g.DType == GPUF16 {
		t.Run("implicit-vs-im2col", func(t *testing.T) { checkImplicitConvCUDA(t, g) })
	}
}

// checkImplicitConvCUDA compares the implicit-GEMM conv with the im2col
// path on the same fp16 tensors, on a size that takes several blocks in
// each direction and a partial last reduction tile (K = 40*9 = 360).
func checkImplicitConvCUDA(t *testing.T, g *GPU) {
	r := rand.New(rand.NewPCG(41, 42))
	x := gpuRand(r, GPUF16, 1, 2, 40, 9, 11)   // [2, 40, 9, 11]
	w := gpuRand(r, GPUF16, 0.1, 70, 40, 3, 3) // [70, 40, 3, 3]
	bias := gpuRand(r, GPUF16, 0.5, 70)        // [70]
	gx, gw, gb := up(t, g, x), up(t, g, w), up(t, g, bias)
	ref, err := g.Conv2d(gx, gw, gb, 1, 1) // [2, 70, 9, 11] by im2col
	must(t, err)
	defer ref.Free()
	want, err := ref.Download()
	must(t, err)
	g.ConvAlgo = ConvImplicitGEMM
	defer func() { g.ConvAlgo = ConvIm2col }()
	if cols, err := g.ConvScratch(gx, gw, 1, 1); err != nil || cols != nil {
		t.Errorf("ConvScratch with the implicit GEMM = %v, %v, want no scratch", cols, err)
	}
	got, err := g.Conv2d(gx, gw, gb, 1, 1) // [2, 70, 9, 11]
	expect(t, "implicit GEMM vs im2col", got, err, want)
	if got != nil {
		got.Free()
	}
	cpu := (&Conv2d{Weight: w, Bias: bias, Stride: 1, Padding: 1}).Forward(x)
	got, err = g.Conv2d(gx, gw, gb, 1, 1)
	expect(t, "implicit GEMM vs CPU", got, err, cpu)
	if got != nil {
		got.Free()
	}
}

func checkConvAlgoCUDA(t *testing.T, g *GPU) {
	r := rand.New(rand.NewPCG(3, 4))
	dt := g.DType
	for _, tc := range []struct {
		name               string
		b, ic, h, w        int
		oc, k, stride, pad int
	}{
		{"3x3", 2, 5, 9, 11, 6, 3, 1, 1},
		{"3x3-stride2", 1, 4, 9, 7, 3, 3, 2, 1},
		{"1x1", 2, 7, 5, 3, 4, 1, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := gpuRand(r, dt, 1, tc.b, tc.ic, tc.h, tc.w)
			c := &Conv2d{Weight: gpuRand(r, dt, 0.3, tc.oc, tc.ic, tc.k, tc.k), Bias: gpuRand(r, dt, 0.5, tc.oc), Stride: tc.stride, Padding: tc.pad}
			want := c.Forward(x)
			gx, gw, gb := up(t, g, x), up(t, g, c.Weight), up(t, g, c.Bias)
			y, err := g.Conv2d(gx, gw, gb, tc.stride, tc.pad)
			expect(t, "Conv2d", y, err, want)
			cols, err := g.ConvScratch(gx, gw, tc.stride, tc.pad)
			must(t, err)
			defer cols.Free()
			must(t, g.Conv2dAddInto(y, cols, gx, gw, nil, tc.stride, tc.pad))
			twice := want.Clone()
			AddInPlace(twice, (&Conv2d{Weight: c.Weight, Stride: tc.stride, Padding: tc.pad}).Forward(x))
			expect(t, "Conv2dAddInto", y, nil, twice)
			y.Free()
		})
	}
	// Padding per side against the CPU conv of an explicitly padded input.
	for _, tc := range []struct {
		name       string
		h, w, k, s int
		pad        ConvPad
	}{
		{"pad-0101-3x3-s2", 9, 6, 3, 2, ConvPad{Bottom: 1, Right: 1}}, // ldm's VAE Downsample
		{"pad-2013-3x3-s1", 5, 7, 3, 1, ConvPad{Top: 2, Left: 0, Bottom: 1, Right: 3}},
		{"pad-1x1-s1", 4, 3, 1, 1, ConvPad{Top: 1}},
		{"nopad-1x1", 4, 3, 1, 1, ConvPad{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := gpuRand(r, dt, 1, 2, 3, tc.h, tc.w) // [2, 3, h, w]
			c := &Conv2d{Weight: gpuRand(r, dt, 0.3, 5, 3, tc.k, tc.k), Bias: gpuRand(r, dt, 0.5, 5), Stride: tc.s}
			want := c.Forward(padSides(x, tc.pad)) // [2, 5, H', W']
			oh, ow := tc.pad.OutSize(tc.h, tc.w, tc.k, tc.k, tc.s)
			y, err := g.EmptyOf(dt, 2, 5, oh, ow) // [2, 5, H', W']
			must(t, err)
			defer y.Free()
			err = g.Conv2dPadInto(y, up(t, g, x), up(t, g, c.Weight), up(t, g, c.Bias), tc.s, tc.pad)
			expect(t, "Conv2dPadInto", y, err, want)
		})
	}
}

// padSides returns x [B, C, H, W] zero-padded by p: [B, C, H+t+b, W+l+r].
func padSides(x *Tensor, p ConvPad) *Tensor {
	b, c, h, w := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	ph, pw := h+p.Top+p.Bottom, w+p.Left+p.Right
	out := New(b, c, ph, pw) // [B, C, H+t+b, W+l+r]
	for i := 0; i < b*c; i++ {
		for y := 0; y < h; y++ {
			copy(out.Data[(i*ph+y+p.Top)*pw+p.Left:], x.Data[(i*h+y)*w:(i*h+y+1)*w])
		}
	}
	return out
}

func checkNormsCUDA(t *testing.T, g *GPU) {
	r := rand.New(rand.NewPCG(5, 6))
	dt := g.DType
	for _, tc := range []struct {
		name           string
		b, c, h, w, gr int
	}{
		{"odd-hw", 2, 12, 5, 7, 4},   // HW = 35: scalar accesses
		{"vector", 2, 64, 8, 12, 8},  // HW = 96: 16-byte accesses, 96 threads
		{"large", 1, 64, 32, 32, 32}, // 2048 per group: 256 threads, several chunks each
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := gpuRand(r, dt, 2, tc.b, tc.c, tc.h, tc.w) // [B, C, H, W]
			gn := &GroupNorm{Groups: tc.gr, Eps: 1e-5, Weight: gpuRand(r, dt, 1, tc.c), Bias: gpuRand(r, dt, 1, tc.c)}
			gx, gw, gbias := up(t, g, x), up(t, g, gn.Weight), up(t, g, gn.Bias)
			for _, silu := range []bool{false, true} {
				want := gn.Forward(x)
				if silu {
					want = gn.ForwardSiLU(x)
				}
				y, err := g.GroupNorm(gx, gw, gbias, tc.gr, 1e-5, silu)
				expect(t, fmt.Sprintf("GroupNorm(silu=%v)", silu), y, err, want)
				y.Free()
			}
			// GroupNormEx: norm of x + pre[b, c], in place, no affine.
			pre := gpuRand(r, dt, 1, tc.b, tc.c) // [B, C]
			xp := x.Clone()
			AddBatchChannelBias(xp, pre)
			want := (&GroupNorm{Groups: tc.gr, Eps: 1e-5}).ForwardSiLU(xp)
			gx2 := up(t, g, x)
			must(t, g.GroupNormEx(gx2, gx2, up(t, g, pre), nil, nil, tc.gr, 1e-5, true))
			expect(t, "GroupNormEx(in place)", gx2, nil, want)
			// GroupNormEx with a [C] pre-add (a conv bias folded in),
			// affine and no SiLU, into a new tensor.
			cpre := gpuRand(r, dt, 1, tc.c) // [C]
			xc := x.Clone()
			AddBatchChannelBias(xc, repeatBatchCPU(cpre, tc.b)) // [B, C, H, W]
			y, err := g.EmptyOf(dt, x.Shape...)                 // [B, C, H, W]
			must(t, err)
			defer y.Free()
			must(t, g.GroupNormEx(y, gx, up(t, g, cpre), gw, gbias, tc.gr, 1e-5, false))
			expect(t, "GroupNormEx(pre [C])", y, nil, gn.Forward(xc))
		})
	}

	lx := gpuRand(r, dt, 1.5, 3, 5, 37) // [B, L, D]
	ln := &LayerNorm{Eps: 1e-5, Weight: gpuRand(r, dt, 1, 37), Bias: gpuRand(r, dt, 1, 37)}
	y, err := g.LayerNorm(up(t, g, lx), up(t, g, ln.Weight), up(t, g, ln.Bias), 1e-5)
	expect(t, "LayerNorm", y, err, ln.Forward(lx))
	y.Free()
	var want *Tensor

	sx := gpuRand(r, dt, 2, 6, 45)
	gs := up(t, g, sx)
	must(t, g.SoftmaxRows(gs, 45, 0.7))
	want = sx.Clone()
	Scale(want, 0.7)
	Softmax(want.Data, 45)
	expect(t, "SoftmaxRows", gs, nil, want)
}

func checkPointwiseCUDA(t *testing.T, g *GPU) {
	r := rand.New(rand.NewPCG(7, 8))
	dt := g.DType
	x := gpuRand(r, dt, 1, 2, 5, 38) // [B, L, 2D]
	y, err := g.GEGLU(up(t, g, x))
	expect(t, "GEGLU", y, err, GEGLU(x))
	y.Free()

	// LinearGEGLU: GEGLU(x W^T + b) with the bias folded into the gate kernel.
	xin := gpuRand(r, dt, 1, 2, 5, 24)
	l := &Linear{Weight: gpuRand(r, dt, 0.3, 38, 24), Bias: gpuRand(r, dt, 0.5, 38)}
	y, err = g.LinearGEGLU(up(t, g, xin), up(t, g, l.Weight), up(t, g, l.Bias))
	expect(t, "LinearGEGLU", y, err, GEGLU(l.Forward(xin)))
	y.Free()

	// proj_in / proj_out of a SpatialTransformer without the transposes.
	xc := gpuRand(r, dt, 1, 2, 24, 5, 7) // [B, C, H, W]
	pin := &Linear{Weight: gpuRand(r, dt, 0.3, 19, 24), Bias: gpuRand(r, dt, 0.5, 19)}
	hin, err := g.LinearChannelsFirst(up(t, g, xc), up(t, g, pin.Weight), up(t, g, pin.Bias))
	want0 := pin.Forward(ChannelsLast(xc))
	expect(t, "LinearChannelsFirst", hin, err, want0)
	pout := &Linear{Weight: gpuRand(r, dt, 0.3, 24, 19), Bias: gpuRand(r, dt, 0.5, 24)}
	res := up(t, g, xc)
	must(t, g.LinearToChannelsFirstAddInto(res, hin, up(t, g, pout.Weight), up(t, g, pout.Bias)))
	want1 := xc.Clone()
	AddInPlace(want1, ChannelsFirst(pout.Forward(want0), 5, 7))
	expect(t, "LinearToChannelsFirstAddInto", res, nil, want1)
	hin.Free()

	s := gpuRand(r, dt, 3, 1001)
	gs := up(t, g, s)
	must(t, g.SiLU(gs))
	want := s.Clone()
	SiLU(want)
	expect(t, "SiLU", gs, nil, want)

	a, b := gpuRand(r, dt, 1, 3, 77), gpuRand(r, dt, 1, 3, 77)
	y, err = g.Add(up(t, g, a), up(t, g, b))
	expect(t, "Add", y, err, Add(a, b))
	bias := gpuRand(r, dt, 1, 77)
	must(t, g.AddRowBias(y, up(t, g, bias)))
	want = Add(a, b)
	for i := range want.Data {
		want.Data[i] += bias.Data[i%77]
	}
	expect(t, "AddRowBias", y, nil, want)
	y.Free()
}

func checkShapeCUDA(t *testing.T, g *GPU) {
	r := rand.New(rand.NewPCG(9, 10))
	dt := g.DType
	x := gpuRand(r, dt, 1, 2, 37, 5, 7) // [B, C, H, W]: C and HW not multiples of 32
	gx := up(t, g, x)
	cl, err := g.ChannelsLast(gx)
	expect(t, "ChannelsLast", cl, err, ChannelsLast(x))
	cf, err := g.ChannelsFirst(cl, 5, 7)
	expect(t, "ChannelsFirst", cf, err, x)
	cl.Free()
	cf.Free()
	big := gpuRand(r, dt, 1, 1, 70, 9, 11) // several 32x32 tiles
	cl, err = g.ChannelsLast(up(t, g, big))
	expect(t, "ChannelsLast(70x99)", cl, err, ChannelsLast(big))
	cl.Free()

	for _, hw := range [][2]int{{10, 14}, {9, 13}} {
		y, err := g.UpsampleNearest(gx, hw[0], hw[1])
		expect(t, fmt.Sprintf("UpsampleNearest(%dx%d)", hw[0], hw[1]), y, err, UpsampleNearest(x, hw[0], hw[1]))
		y.Free()
	}
	b := gpuRand(r, dt, 1, 2, 3, 5, 7)
	y, err := g.ConcatChannels(gx, up(t, g, b))
	expect(t, "ConcatChannels", y, err, Concat(1, x, b))
	y.Free()

	bias := gpuRand(r, dt, 1, 2, 37) // [B, C]
	gx2 := up(t, g, x)
	must(t, g.AddBatchChannelBias(gx2, up(t, g, bias)))
	want := x.Clone()
	AddBatchChannelBias(want, bias)
	expect(t, "AddBatchChannelBias", gx2, nil, want)
}

// attnCase is one attention shape and option set.
type attnCase struct {
	name            string
	b, lq, lk, h, d int
	causal, noScale bool
	bias            int // 0 none, 1 [1, 1, Lq, Lk], 2 [B, H, Lq, Lk]
	mask            bool
}

var attnCases = []attnCase{
	{name: "sd-d40", b: 1, lq: 37, lk: 53, h: 2, d: 40},
	{name: "sd-cross-d160", b: 2, lq: 70, lk: 77, h: 2, d: 160},
	{name: "sd-d80", b: 1, lq: 65, lk: 65, h: 1, d: 80},
	{name: "clip-d64-causal", b: 2, lq: 19, lk: 19, h: 3, d: 64, causal: true},
	{name: "t5-d64-bias-mask", b: 2, lq: 23, lk: 29, h: 2, d: 64, noScale: true, bias: 2, mask: true},
	{name: "ella-d96-bias", b: 1, lq: 33, lk: 17, h: 2, d: 96, bias: 1},
	{name: "tiny-d8", b: 2, lq: 5, lk: 3, h: 4, d: 8},
	{name: "d128-causal-mask", b: 2, lq: 70, lk: 70, h: 1, d: 128, causal: true, mask: true},
	{name: "d12-unaligned", b: 1, lq: 9, lk: 13, h: 3, d: 12}, // rows not 16-byte multiples: scalar tile loads
	{name: "d7-odd", b: 2, lq: 17, lk: 66, h: 1, d: 7},
	{name: "vae-d512", b: 2, lq: 37, lk: 37, h: 1, d: 512},
	{name: "vae-d512-long", b: 1, lq: 300, lk: 300, h: 1, d: 512}, // 19 query blocks, 10 key tiles, partial tails
	{name: "wide-d200-causal-mask-bias", b: 2, lq: 21, lk: 35, h: 2, d: 200, causal: true, mask: true, bias: 2},
	{name: "wide-d264-noscale", b: 1, lq: 17, lk: 33, h: 1, d: 264, noScale: true, bias: 1},
	{name: "wide-d170-unaligned", b: 1, lq: 18, lk: 40, h: 1, d: 170}, // scalar tile loads
}

func checkAttentionCUDA(t *testing.T, g *GPU) {
	dt := g.DType
	kernels := []bool{false}
	if dt == GPUF16 {
		kernels = append(kernels, true) // the SIMT kernel on fp16 too
	}
	for i, tc := range attnCases {
		for _, simt := range kernels {
			name := tc.name
			if simt {
				name += "-simt"
			}
			t.Run(name, func(t *testing.T) {
				attnForceSIMT = simt
				defer func() { attnForceSIMT = false }()
				checkAttentionCase(t, g, tc, uint64(i))
			})
		}
	}
	t.Run("packed", func(t *testing.T) { checkPackedAttentionCUDA(t, g) })
	t.Run("all-masked-row", func(t *testing.T) {
		r := rand.New(rand.NewPCG(99, 1))
		q, k, v := gpuRand(r, dt, 1, 2, 9, 16), gpuRand(r, dt, 1, 2, 5, 16), gpuRand(r, dt, 1, 2, 5, 16)
		mask := New(2, 5)
		for j := range 5 {
			mask.Data[j] = 1 // batch item 0 keeps every key, item 1 none
		}
		o, err := g.AttentionOpts(up(t, g, q), up(t, g, k), up(t, g, v), 1, GPUAttentionOpts{KeyMask: up(t, g, mask)})
		must(t, err)
		defer o.Free()
		got, err := o.Download()
		must(t, err)
		item0 := func(x *Tensor) *Tensor { return From(x.Data[:x.Numel()/2], 1, x.Shape[1], x.Shape[2]) }
		want := ScaledDotProductAttention(item0(q), item0(k), item0(v), 1, AttentionOpts{})
		if e := gpuRelL2(got.Data[:9*16], want.Data); e > opTol[dt] {
			t.Errorf("unmasked item: rel L2 %.3g", e)
		}
		for i, x := range got.Data[9*16:] {
			if x != 0 {
				t.Fatalf("fully masked item: element %d = %g, want 0", i, x)
			}
		}
	})
}

// checkPackedAttentionCUDA reads q, k, v from fused projections in
// place: [B, L, 3C] (self-attention) and [B, Lk, 2C] (cross-attention),
// for an aligned head dim (16-byte tile loads) and an unaligned one.
func checkPackedAttentionCUDA(t *testing.T, g *GPU) {
	r := rand.New(rand.NewPCG(21, 22))
	dt := g.DType
	for _, tc := range []struct{ b, l, lk, h, d int }{{2, 37, 77, 2, 40}, {1, 20, 9, 3, 6}} {
		c := tc.h * tc.d
		qkv := gpuRand(r, dt, 1, tc.b, tc.l, 3*c)
		p := Split(qkv, c, c, c)
		o, err := g.AttentionQKV(up(t, g, qkv), tc.h, GPUAttentionOpts{})
		expect(t, fmt.Sprintf("AttentionQKV d=%d", tc.d), o, err, ScaledDotProductAttention(p[0], p[1], p[2], tc.h, AttentionOpts{}))
		o.Free()
		kv := gpuRand(r, dt, 1, tc.b, tc.lk, 2*c)
		kvs := Split(kv, c, c)
		o, err = g.AttentionKV(up(t, g, p[0]), up(t, g, kv), tc.h, GPUAttentionOpts{})
		expect(t, fmt.Sprintf("AttentionKV d=%d", tc.d), o, err, ScaledDotProductAttention(p[0], kvs[0], kvs[1], tc.h, AttentionOpts{}))
		o.Free()
	}
}

func checkAttentionCase(t *testing.T, g *GPU, tc attnCase, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 11))
	dt := g.DType
	c := tc.h * tc.d
	q := gpuRand(r, dt, 1, tc.b, tc.lq, c)
	k := gpuRand(r, dt, 1, tc.b, tc.lk, c)
	v := gpuRand(r, dt, 1, tc.b, tc.lk, c)
	opt := GPUAttentionOpts{Causal: tc.causal, NoScale: tc.noScale}
	cpuOpt := AttentionOpts{NoScale: tc.noScale}
	// The CPU takes causal masking and the key mask as a bias of -1e30.
	cb, ch := 1, 1
	var bias *Tensor
	switch tc.bias {
	case 1:
		bias = gpuRand(r, dt, 1, 1, 1, tc.lq, tc.lk)
	case 2:
		bias = gpuRand(r, dt, 1, tc.b, tc.h, tc.lq, tc.lk)
		cb, ch = tc.b, tc.h
	}
	if bias != nil {
		opt.Bias = up(t, g, bias)
	}
	var mask *Tensor
	if tc.mask {
		mask = New(tc.b, tc.lk)
		for i := range mask.Data {
			if r.IntN(4) != 0 || i%tc.lk == 0 { // key 0 always kept: no empty row
				mask.Data[i] = 1
			}
		}
		opt.KeyMask = up(t, g, mask)
	}
	if bias != nil || tc.causal || tc.mask {
		if tc.causal || tc.mask {
			cb, ch = tc.b, tc.h
		}
		full := New(cb, ch, tc.lq, tc.lk)
		for n := range cb {
			for h := range ch {
				for i := range tc.lq {
					for j := range tc.lk {
						var x float32
						if bias != nil {
							bn, bh := min(n, bias.Shape[0]-1), min(h, bias.Shape[1]-1)
							x = bias.Data[((bn*bias.Shape[1]+bh)*tc.lq+i)*tc.lk+j]
						}
						if (tc.causal && j > i) || (mask != nil && mask.Data[n*tc.lk+j] == 0) {
							x = -1e30
						}
						full.Data[((n*ch+h)*tc.lq+i)*tc.lk+j] = x
					}
				}
			}
		}
		cpuOpt.Bias = full
	}
	want := ScaledDotProductAttention(q, k, v, tc.h, cpuOpt)
	o, err := g.AttentionOpts(up(t, g, q), up(t, g, k), up(t, g, v), tc.h, opt)
	expect(t, "Attention", o, err, want)
	if o != nil {
		o.Free()
	}
}

// checkBroadcastCUDA checks AddBroadcastInPlace (batch 1 and batch B
// operands) and RepeatBatch against the CPU sum / copy.
func checkBroadcastCUDA(t *testing.T, g *GPU) {
	r := rand.New(rand.NewPCG(31, 32))
	dt := g.DType
	x := gpuRand(r, dt, 1, 3, 4, 5, 7) // [3, 4, 5, 7]
	for _, yb := range []int{1, 3} {
		y := gpuRand(r, dt, 1, yb, 4, 5, 7) // [1 or 3, 4, 5, 7]
		want := x.Clone()
		AddInPlace(want, repeatBatchCPU(y, 3/yb))
		gx := up(t, g, x)
		err := g.AddBroadcastInPlace(gx, up(t, g, y))
		expect(t, fmt.Sprintf("AddBroadcastInPlace(batch %d)", yb), gx, err, want)
	}
	y := gpuRand(r, dt, 1, 1, 4, 5, 7) // [1, 4, 5, 7]
	rep, err := g.RepeatBatch(up(t, g, y), 3)
	expect(t, "RepeatBatch", rep, err, repeatBatchCPU(y, 3))
	if rep != nil {
		rep.Free()
	}
	if err := g.AddBroadcastInPlace(up(t, g, x), up(t, g, gpuRand(r, dt, 1, 2, 4, 5, 7))); err == nil {
		t.Error("AddBroadcastInPlace of batch 2 onto batch 3 succeeded")
	}
}

// repeatBatchCPU returns x [1, ...] repeated n times along axis 0 (test helper).
func repeatBatchCPU(x *Tensor, n int) *Tensor {
	shape := append([]int{n * x.Shape[0]}, x.Shape[1:]...)
	out := New(shape...)
	for i := 0; i < n; i++ {
		copy(out.Data[i*x.Numel():], x.Data)
	}
	return out
}

// checkUpDownCUDA round-trips values through both dtypes: fp32 exactly,
// fp16 as the nearest-even halves (overflow to Inf, subnormals kept).
func checkUpDownCUDA(t *testing.T, g *GPU) {
	x := New(9)
	copy(x.Data, []float32{0, -1.5, 65504, 65520, 1e-7, 3.0000001, float32(math.Inf(-1)), 5.960464477539063e-08, 1e5})
	want16 := []float32{0, -1.5, 65504, float32(math.Inf(1)), 1.1920929e-07, 3, float32(math.Inf(-1)), 5.960464477539063e-08, float32(math.Inf(1))}
	for _, tc := range []struct {
		dt   GPUDType
		want []float32
	}{{GPUF32, x.Data}, {GPUF16, want16}} {
		d, err := g.UploadAs(x, tc.dt)
		must(t, err)
		if d.Bytes() != 9*tc.dt.Size() {
			t.Errorf("%s: %d bytes", tc.dt, d.Bytes())
		}
		h, err := d.Download()
		must(t, err)
		d.Free()
		if !slices.Equal(h.Data, tc.want) {
			t.Errorf("%s round trip = %v, want %v", tc.dt, h.Data, tc.want)
		}
	}
}

func checkOpErrorsCUDA(t *testing.T, g *GPU) {
	a, err := g.EmptyOf(GPUF32, 2, 4)
	must(t, err)
	defer a.Free()
	b, err := g.EmptyOf(GPUF16, 2, 4)
	must(t, err)
	defer b.Free()
	w, err := g.EmptyOf(GPUF32, 3, 5)
	must(t, err)
	defer w.Free()
	if _, err := g.Add(a, b); err == nil {
		t.Error("Add of f32 and f16 succeeded")
	}
	if _, err := g.Linear(a, w, nil); err == nil {
		t.Error("Linear with a [3, 5] weight on [2, 4] succeeded")
	}
	q, err := g.EmptyOf(GPUF32, 1, 4, 2*520)
	must(t, err)
	defer q.Free()
	if _, err := g.Attention(q, q, q, 2, 0); err == nil {
		t.Error("Attention with head dim 520 succeeded")
	}
}

// checkArenaCUDA runs a few ops with a fresh GPU.Arena: tensors come
// from the pool and Free gives them back.
func checkArenaCUDA(t *testing.T, g *GPU) {
	a := g.Dev.NewArena(cuda.ArenaOptions{Name: "nn test arena", BlockSize: 1 << 20})
	defer a.Close()
	old := g.Arena
	g.Arena, g.DType = a, GPUF16
	defer func() { g.Arena, g.DType = old, GPUF32 }()
	r := rand.New(rand.NewPCG(12, 13))
	x := gpuRand(r, GPUF16, 1, 2, 12, 3, 5)
	gx := up(t, g, x)
	y, err := g.GroupNorm(gx, nil, nil, 3, 1e-5, true)
	expect(t, "GroupNorm from the arena", y, err, (&GroupNorm{Groups: 3, Eps: 1e-5}).ForwardSiLU(x))
	if st := a.Stats(); st.Live != 2 || st.Grows != 1 {
		t.Errorf("arena after two tensors: %+v, want 2 live allocations in one block", st)
	}
	must(t, y.Free())
	must(t, gx.Free())
	if st := a.Stats(); st.Live != 0 {
		t.Errorf("arena after Free: %d live allocations", st.Live)
	}
}

// checkGemmPathsCUDA runs Linear through both GEMM paths: cuBLAS plus the
// bias kernel, and cuBLASLt with the bias in the epilogue (when the
// library loads).
func checkGemmPathsCUDA(t *testing.T, g *GPU) {
	old := g.Lt
	defer func() { g.Lt, g.DType = old, GPUF32 }()
	lt := old
	if lt == nil {
		var err error
		if lt, err = g.Dev.NewLt(); err != nil {
			t.Logf("no cuBLASLt, cuBLAS path only: %v", err)
		} else {
			defer lt.Close()
		}
	}
	for _, p := range []struct {
		name string
		lt   *cuda.Lt
	}{{"cublas", nil}, {"cublaslt", lt}} {
		if p.name == "cublaslt" && lt == nil {
			continue
		}
		for _, dt := range []GPUDType{GPUF32, GPUF16} {
			t.Run(p.name+"-"+dt.String(), func(t *testing.T) {
				g.Lt, g.DType = p.lt, dt
				checkLinearCUDA(t, g)
			})
		}
	}
}
