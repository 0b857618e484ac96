// rng_test.go pins the torch CPU generator and the Philox generator against
// values printed once by PyTorch 1.13 (Debian python3-torch) and by webui's
// rng_philox.py formulas; neither is needed to run the tests.
package host

import (
	"math"
	"testing"
)

func TestTorchRandn(t *testing.T) {
	// torch.manual_seed(seed); torch.randn(1, 4, 8, 8).flatten()[idx]
	idx := []int{0, 1, 7, 8, 15, 100, 255}
	for _, tc := range []struct {
		seed uint64
		want []float64
	}{
		{0, []float64{-1.1258398294448853, -1.152360200881958, -2.1152193546295166, 0.32227492332458496, -0.2472781538963318, -2.6133224964141846, 0.39039579033851624}},
		{42, []float64{1.9269152879714966, 1.4872840642929077, -1.6046669483184814, -0.7521352767944336, 0.7624453902244568, 0.640755295753479, 0.22245365381240845}},
		{123456789, []float64{0.2642554044723511, -0.41489896178245544, -0.30944085121154785, -0.9845864176750183, 1.2969768047332764, 0.052227046340703964, 0.6002526879310608}},
		{1<<32 + 7, []float64{-0.8201345205307007, 0.39563116431236267, -0.8936554193496704, 0.9265429973602295, 1.090165138244629, 0.12744353711605072, -0.3004315495491028}},
	} {
		out := make([]float32, 256)
		NewTorchGenerator(tc.seed).Randn(out)
		for k, i := range idx {
			if out[i] != float32(tc.want[k]) { // bit for bit (rng_avxmath.go)
				t.Errorf("seed %d: randn[%d] = %.9g, want %.9g", tc.seed, i, out[i], tc.want[k])
			}
		}
	}
}

func TestTorchRandnShapes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		seed  uint64
		sizes []int // successive randn calls on one generator
		want  [][]float64
	}{
		{"n=20 (tail redrawn)", 42, []int{20}, [][]float64{{1.9269152879714966, 1.4872840642929077, 0.9007171988487244, -2.1055209636688232, -0.7581311464309692, 1.078317642211914, 0.8008005619049072, 1.680620551109314, 0.3558599054813385, -0.6866229772567749, -0.4933563470840454, 0.2414877861738205, -0.2316243201494217, 0.041759490966796875, -0.2515752911567688, 0.859858512878418, -0.3097267746925354, -0.3957104980945587, 0.8034093379974365, -0.6215953826904297}}},
		{"n<16 (double path, cached value)", 42, []int{5, 3}, [][]float64{{0.33669036626815796, 0.12880940735340118, 0.23446236550807953, 0.23033303022384644, -1.1228563785552979}, {-0.18632829189300537, 2.2082014083862305, -0.637997031211853}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewTorchGenerator(tc.seed)
			for c, n := range tc.sizes {
				out := make([]float32, n)
				g.Randn(out)
				for i := range out {
					// the n < 16 path uses Go's float64 log/sin/cos: within an ulp.
					if math.Abs(float64(out[i])-tc.want[c][i]) > 2e-7*max(1, math.Abs(tc.want[c][i])) {
						t.Errorf("call %d: randn[%d] = %.9g, want %.9g", c, i, out[i], tc.want[c][i])
					}
				}
			}
		})
	}
	// A second draw continues the stream (torch.manual_seed(7); randn; randn).
	g := NewTorchGenerator(7)
	a, b := make([]float32, 256), make([]float32, 256)
	g.Randn(a)
	g.Randn(b)
	if b[0] != float32(0.006349292118102312) || b[200] != float32(0.6908897161483765) {
		t.Errorf("second draw: %v %v", b[0], b[200])
	}
}

func TestMT19937(t *testing.T) {
	// The 10000th output of std::mt19937 with the default seed 5489 is 4123659995 (C++ standard).
	m := newMT19937(5489)
	var v uint32
	for range 10000 {
		v = m.uint32()
	}
	if v != 4123659995 {
		t.Errorf("mt19937 10000th = %d, want 4123659995", v)
	}
}

func TestPhiloxRandn(t *testing.T) {
	// webui rng_philox.Generator(seed).randn((4, 8, 8)) twice; values from its
	// numpy code. Seed 0's first values are also torch.randn's on CUDA
	// (-0.9247, -0.4253), which this generator imitates.
	for _, tc := range []struct {
		seed        uint64
		first       map[int]float64
		secondFirst float64
		secondLast  float64
	}{
		{0, map[int]float64{0: -0.9246624112129211, 1: -0.42534396052360535, 100: 0.06617244333028793, 255: -0.8466604948043823}, 0.18082588911056519, 0.1962755173444748},
		{42, map[int]float64{0: 0.1940188705921173, 1: 2.1613738536834717, 100: -1.6531449556350708, 255: -1.800972580909729}, 0.13913749158382416, -0.6388839483261108},
		{1<<33 + 5, map[int]float64{0: -0.8093299865722656, 1: 1.1234854459762573, 100: -0.05291149020195007, 255: 0.286894828081131}, 0.3355804681777954, -1.4430665969848633},
	} {
		g := NewPhiloxGenerator(tc.seed)
		a, b := make([]float32, 256), make([]float32, 256)
		g.Randn(a)
		g.Randn(b)
		for i, want := range tc.first {
			if math.Abs(float64(a[i])-want) > 1e-7*max(1, math.Abs(want)) {
				t.Errorf("seed %d: first draw [%d] = %.9g, want %.9g", tc.seed, i, a[i], want)
			}
		}
		if math.Abs(float64(b[0])-tc.secondFirst) > 1e-7 || math.Abs(float64(b[255])-tc.secondLast) > 1e-7 {
			t.Errorf("seed %d: second draw = %v .. %v, want %v .. %v", tc.seed, b[0], b[255], tc.secondFirst, tc.secondLast)
		}
	}
}

func TestSeedNoise(t *testing.T) {
	// ComfyUI: one randn over the batch; A1111: generator seed+i per image.
	comfy, err := NewSeedNoise("comfy", 42)
	if err != nil {
		t.Fatal(err)
	}
	x, err := comfy.Initial([]int{2, 4, 8, 8})
	if err != nil {
		t.Fatal(err)
	}
	if x.Data[0] != float32(1.9269152879714966) {
		t.Errorf("comfy initial[0] = %v", x.Data[0])
	}
	a1111, err := NewSeedNoise("a1111", 41)
	if err != nil {
		t.Fatal(err)
	}
	y, err := a1111.Initial([]int{2, 4, 8, 8})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(float64(y.Data[256])-0.1940188705921173) > 1e-7 { // image 1 = seed 42
		t.Errorf("a1111 image 1 [0] = %v", y.Data[256])
	}
	step, err := a1111.Steps().Next([]int{2, 4, 8, 8})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(float64(step.Data[256])-0.13913749158382416) > 1e-7 { // seed 42, second draw
		t.Errorf("a1111 step noise image 1 [0] = %v", step.Data[256])
	}
	if _, err := NewSeedNoise("bogus", 1); err == nil {
		t.Error("unknown noise kind accepted")
	}
}

func BenchmarkTorchRandn(b *testing.B) {
	out := make([]float32, 4*64*64) // one 512x512 latent
	b.SetBytes(int64(4 * len(out)))
	b.ReportAllocs()
	for b.Loop() {
		NewTorchGenerator(42).Randn(out)
	}
}

func BenchmarkPhiloxRandn(b *testing.B) {
	out := make([]float32, 4*64*64)
	b.SetBytes(int64(4 * len(out)))
	b.ReportAllocs()
	for b.Loop() {
		NewPhiloxGenerator(42).Randn(out)
	}
}
