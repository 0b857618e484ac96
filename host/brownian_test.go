// brownian_test.go checks the Brownian tree noise against torchsde and
// k-diffusion. testdata/brownian_ref.json was written by
// testdata/brownian_ref.py (see its header) with Debian's python3-torch
// 1.13.1 and python3-numpy 1.24.2, torchsde at commit eb3a00e and k-diffusion
// at 4601bf0: numpy SeedSequence states, BrownianTreeNoiseSampler noise for
// karras (10 steps) and exponential (6 steps) schedules on [1,4,8,8] and
// [2,4,8,8] latents for seeds 0, 5, 1234567 and 2^63+12345, one case queried
// out of order, and sample_dpmpp_2m_sde's result on the stub denoiser
// D(x, sigma) = x / (1 + sigma^2). Neither Python nor torch is needed to run
// the tests. The structural tests (additivity, variance, determinism, order
// independence) need no fixture.
package host

import (
	"encoding/json"
	"math"
	"os"
	"slices"
	"testing"

	"github.com/sdbridge/sdbridge/nn"
)

// brownianPick is some elements of a tensor plus float64 sums over it.
type brownianPick struct {
	Idx   []int     `json:"idx"`
	Vals  []float64 `json:"vals"`
	Sum   float64   `json:"sum"`
	SumSq float64   `json:"sumsq"`
}

type brownianRef struct {
	SeedSeq []struct {
		Entropy  uint64   `json:"entropy"`
		SpawnKey []uint64 `json:"spawn_key"`
		Pool     int      `json:"pool"`
		State    []uint32 `json:"state"`
	} `json:"seedseq"`
	Trees []struct {
		Seed    uint64    `json:"seed"`
		Shape   []int     `json:"shape"`
		Sigmas  []float64 `json:"sigmas"`
		Queries []struct {
			brownianPick
			Step int `json:"step"`
		} `json:"queries"`
	} `json:"trees"`
	Samplers []struct {
		brownianPick
		Seed   uint64    `json:"seed"`
		Shape  []int     `json:"shape"`
		Sigmas []float64 `json:"sigmas"`
	} `json:"samplers"`
}

func loadBrownianRef(t *testing.T) *brownianRef {
	t.Helper()
	raw, err := os.ReadFile("testdata/brownian_ref.json")
	if err != nil {
		t.Fatal(err)
	}
	var ref brownianRef
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatalf("testdata/brownian_ref.json: %v", err)
	}
	if len(ref.SeedSeq) == 0 || len(ref.Trees) == 0 || len(ref.Samplers) == 0 {
		t.Fatal("testdata/brownian_ref.json: a section is empty")
	}
	return &ref
}

// checkPick compares got with the reference elements (abs tol) and sums
// (tolerance scaled by the element count). It returns the worst element error.
func checkPick(t *testing.T, what string, got []float32, want brownianPick, tol float64) float64 {
	t.Helper()
	worst := 0.0
	for k, i := range want.Idx {
		d := math.Abs(float64(got[i]) - want.Vals[k])
		worst = max(worst, d)
		if d > tol {
			t.Errorf("%s: [%d] = %.9g, want %.9g", what, i, got[i], want.Vals[k])
		}
	}
	var sum, sumSq float64
	for _, v := range got {
		sum += float64(v)
		sumSq += float64(v) * float64(v)
	}
	n := float64(len(got))
	if math.Abs(sum-want.Sum) > tol*n || math.Abs(sumSq-want.SumSq) > tol*n*10 {
		t.Errorf("%s: sum %.9g, sumsq %.9g, want %.9g, %.9g", what, sum, sumSq, want.Sum, want.SumSq)
	}
	return worst
}

func TestSeedSequenceState(t *testing.T) {
	for _, tc := range loadBrownianRef(t).SeedSeq {
		got := seedSequenceState(tc.Entropy, tc.SpawnKey, tc.Pool, len(tc.State))
		if !slices.Equal(got, tc.State) {
			t.Errorf("SeedSequence(%d, spawn_key=%v, pool_size=%d): %v, want %v", tc.Entropy, tc.SpawnKey, tc.Pool, got, tc.State)
		}
	}
}

func TestBrownianRound(t *testing.T) {
	for _, tc := range []struct{ in, want float64 }{
		{14.614643096923828, 14.614643},
		{0.02916753850877285, 0.029168},
		{7.3219430684853, 7.321943},
		{0.0000005, 0},    // exactly below half (0.5e-6 is not representable): Python gives 0.0
		{0.0000015, 2e-6}, // Python round(1.5e-6, 6) = 2e-06
		{2.5, 2.5},
	} {
		if got := brownianRound(tc.in); got != tc.want {
			t.Errorf("round(%v, 6) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestBrownianNoiseMatchesTorchsde(t *testing.T) {
	worst := 0.0
	ref := loadBrownianRef(t)
	// held 0 keeps the default cache; 3 makes the tree recompute evicted
	// increments.
	for _, held := range []int{0, 3} {
		for _, tc := range ref.Trees {
			smin, smax := math.Inf(1), 0.0
			for _, s := range tc.Sigmas {
				if s > 0 {
					smin = min(smin, s)
				}
				smax = max(smax, s)
			}
			ns, err := NewBrownianNoiseSampler(tc.Shape, smin, smax, tc.Seed)
			if err != nil {
				t.Fatal(err)
			}
			if held > 0 {
				ns.tree.maxHeld = held
			}
			for _, q := range tc.Queries {
				got, err := ns.Between(tc.Sigmas[q.Step], tc.Sigmas[q.Step+1])
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got.Shape, tc.Shape) {
					t.Fatalf("seed %d step %d: shape %v, want %v", tc.Seed, q.Step, got.Shape, tc.Shape)
				}
				w := checkPick(t, "seed "+itoa(tc.Seed)+" step "+itoa(uint64(q.Step)), got.Data, q.brownianPick, 1e-5)
				worst = max(worst, w)
			}
		}
	}
	t.Logf("worst element error vs torchsde: %.3g", worst)
}

func TestDPMPP2MSDEMatchesKDiffusion(t *testing.T) {
	stub := func(x *nn.Tensor, sigma float64) (*nn.Tensor, error) {
		out := nn.New(x.Shape...) // [B, C, H, W]
		s := float64(float32(sigma))
		for i, v := range x.Data {
			out.Data[i] = float32(float64(v) / (1 + s*s))
		}
		return out, nil
	}
	worst := 0.0
	for _, tc := range loadBrownianRef(t).Samplers {
		x := nn.New(tc.Shape...) // [B, C, H, W]
		NewTorchGenerator(tc.Seed).Randn(x.Data)
		s0 := float32(tc.Sigmas[0])
		for i := range x.Data {
			x.Data[i] *= s0
		}
		out, err := SampleDPMPP2MSDE(stub, x, tc.Sigmas, SampleOptions{Noise: &BrownianSeedNoise{Seed: tc.Seed}})
		if err != nil {
			t.Fatal(err)
		}
		worst = max(worst, checkPick(t, "dpmpp_2m_sde seed "+itoa(tc.Seed), out.Data, tc.brownianPick, 1e-5))
	}
	t.Logf("worst element error vs k-diffusion: %.3g", worst)
}

func itoa(v uint64) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestBrownianTreeStructure(t *testing.T) {
	const numel = 4096
	tree, err := NewBrownianTree(0.029168, 14.614643, numel, 77)
	if err != nil {
		t.Fatal(err)
	}
	inc := func(a, b float64) []float32 {
		t.Helper()
		w, err := tree.Increment(a, b)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	t.Run("additive", func(t *testing.T) {
		for _, tc := range []struct{ a, b, c float64 }{
			{0.1, 0.7, 3.2},
			{0.029168, 5.5, 14.614643},
			{1.000001, 1.000002, 1.000003},
		} {
			ac, ab, bc := inc(tc.a, tc.c), inc(tc.a, tc.b), inc(tc.b, tc.c)
			for i := range ac {
				if d := math.Abs(float64(ac[i]) - float64(ab[i]+bc[i])); d > 1e-5*(1+math.Abs(float64(ac[i]))) {
					t.Fatalf("W(%v,%v)[%d] = %v, W(%v,%v)+W(%v,%v) = %v", tc.a, tc.c, i, ac[i], tc.a, tc.b, tc.b, tc.c, ab[i]+bc[i])
				}
			}
		}
	})
	t.Run("variance", func(t *testing.T) {
		// Var W(a, b) = b - a; the sample variance over 4096 elements has a
		// relative standard deviation of sqrt(2/4096) = 2.2%.
		for _, iv := range [][2]float64{{0.05, 0.06}, {1, 2}, {3, 14}, {0.2, 0.200004}} {
			w := inc(iv[0], iv[1])
			var ss float64
			for _, v := range w {
				ss += float64(v) * float64(v)
			}
			rel := ss / numel / (iv[1] - iv[0])
			if math.Abs(rel-1) > 0.12 {
				t.Errorf("Var W(%v, %v) / (b-a) = %.3f, want 1", iv[0], iv[1], rel)
			}
		}
	})
	t.Run("seeded", func(t *testing.T) {
		again, err := NewBrownianTree(0.029168, 14.614643, numel, 77)
		if err != nil {
			t.Fatal(err)
		}
		other, err := NewBrownianTree(0.029168, 14.614643, numel, 78)
		if err != nil {
			t.Fatal(err)
		}
		w1, w2, w3 := inc(0.5, 1.5), must(again.Increment(0.5, 1.5)), must(other.Increment(0.5, 1.5))
		if !slices.Equal(w1, w2) {
			t.Error("same seed gave a different path")
		}
		if slices.Equal(w1, w3) {
			t.Error("seeds 77 and 78 gave the same path")
		}
	})
	t.Run("order independent", func(t *testing.T) {
		// Increments do not depend on earlier queries or on the cache: ask a
		// fresh tree that holds only 3 increments (so it recomputes evicted
		// ones) for many intervals in reverse.
		pts := []float64{0.03, 0.05, 0.11, 0.2, 0.35, 0.9, 1.7, 3.1, 5.4, 9.1, 14.6}
		fresh, err := NewBrownianTree(0.029168, 14.614643, numel, 77)
		if err != nil {
			t.Fatal(err)
		}
		fresh.maxHeld = 3
		for k := len(pts) - 2; k >= 0; k-- {
			want := inc(pts[k], pts[k+1])
			got := must(fresh.Increment(pts[k], pts[k+1]))
			if !slices.Equal(got, want) {
				t.Fatalf("W(%v, %v) differs with query order", pts[k], pts[k+1])
			}
		}
	})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestBrownianErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		t0, t1 float64
		numel  int
	}{
		{"reversed", 2, 1, 4},
		{"empty range", 1, 1, 4},
		{"no elements", 0, 1, 0},
		{"infinite", 0, math.Inf(1), 4},
	} {
		if _, err := NewBrownianTree(tc.t0, tc.t1, tc.numel, 1); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
	ns, err := NewBrownianNoiseSampler([]int{1, 4}, 0.1, 10, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ns.Between(1, 1); err == nil {
		t.Error("empty step: no error")
	}
	tree, err := NewBrownianTree(0, 1, 4, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tree.Increment(0.6, 0.5); err == nil {
		t.Error("reversed query: no error")
	}
}

// BenchmarkBrownianSteps is the tree noise of a 20-step karras run on a
// 512x512 latent ([1, 4, 64, 64]).
func BenchmarkBrownianSteps(b *testing.B) {
	sigmas := KarrasSigmas(20, 0.0291675, 14.614643, 7)
	for range b.N {
		ns, err := NewBrownianNoiseSampler([]int{1, 4, 64, 64}, sigmas[19], sigmas[0], 42)
		if err != nil {
			b.Fatal(err)
		}
		for i := range 19 {
			if _, err := ns.Between(sigmas[i], sigmas[i+1]); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func TestBrownianSeedNoise(t *testing.T) {
	// Next draws from Steps (the samplers without a tree); with no Steps it
	// is an error.
	steps := &ListNoise{List: []*nn.Tensor{nn.From([]float32{1, 2}, 1, 2)}}
	n := &BrownianSeedNoise{Seed: 3, Steps: steps}
	got, err := n.Next([]int{1, 2})
	if err != nil || got.Data[1] != 2 {
		t.Fatalf("Next = %v, %v; want the recorded draw", got, err)
	}
	if _, err := (&BrownianSeedNoise{Seed: 3}).Next([]int{1, 2}); err == nil {
		t.Error("Next without Steps: no error")
	}
	// A schedule whose only step ends at 0 needs no tree (its sigma range
	// would be empty) and returns the denoised estimate.
	x := nn.From([]float32{4, -4}, 1, 2, 1, 1) // [B, C, H, W]
	out, err := SampleDPMPP2MSDE(func(x *nn.Tensor, sigma float64) (*nn.Tensor, error) {
		return nn.From([]float32{0.5, 0.25}, x.Shape...), nil
	}, x, []float64{2, 0}, SampleOptions{Noise: n})
	if err != nil || out.Data[0] != 0.5 || out.Data[1] != 0.25 {
		t.Fatalf("one step to 0: %v, %v", out, err)
	}
}
