// sample_test.go checks the samplers against closed forms: for Gaussian data
// x0 ~ N(0, sd^2) the ideal denoiser is D(x; s) = x*sd^2/(sd^2+s^2) and the
// probability-flow ODE maps x(sigma_max) to x(0) = x*sd/sqrt(sd^2+sigma_max^2);
// every ODE sampler must converge to it at its order. Single steps are
// checked against hand-computed k-diffusion formulas.
package host

import (
	"math"
	"testing"

	"github.com/sdbridge/sdbridge/nn"
)

const dataSD = 0.8

func gaussDenoiser(calls *int) Denoiser {
	return func(x *nn.Tensor, sigma float64) (*nn.Tensor, error) {
		*calls++
		out := nn.New(x.Shape...)
		k := dataSD * dataSD / (dataSD*dataSD + sigma*sigma)
		for i, v := range x.Data {
			out.Data[i] = float32(float64(v) * k)
		}
		return out, nil
	}
}

func odeError(t *testing.T, name string, steps int) float64 {
	t.Helper()
	s := sd15(t)
	sigmas, err := s.SamplingSigmas("karras", steps)
	if err != nil {
		t.Fatal(err)
	}
	sampler, err := LookupSampler(name)
	if err != nil {
		t.Fatal(err)
	}
	x := nn.From([]float32{float32(sigmas[0]), float32(-2 * sigmas[0])}, 1, 2, 1, 1)
	calls := 0
	out, err := sampler(gaussDenoiser(&calls), x, sigmas, SampleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The schedule stops at sigma_min then jumps to 0 with an Euler/denoise
	// step, so compare with the exact flow to sigma_min followed by the
	// denoiser at sigma_min (what every sampler's last step does).
	smin := sigmas[len(sigmas)-2]
	worst := 0.0
	for i, v := range x.Data {
		atMin := float64(v) * math.Sqrt(dataSD*dataSD+smin*smin) / math.Sqrt(dataSD*dataSD+sigmas[0]*sigmas[0])
		want := atMin * dataSD * dataSD / (dataSD*dataSD + smin*smin)
		worst = max(worst, math.Abs(float64(out.Data[i])-want)/math.Abs(want))
	}
	return worst
}

func TestODESamplersConverge(t *testing.T) {
	for _, tc := range []struct {
		name     string
		minRatio float64 // error(n) / error(2n) at least this (order 1: ~2, order 2: ~4)
		tol100   float64 // relative error at 100 steps at most
	}{
		{"euler", 1.8, 2e-2},
		{"ddim", 1.8, 2e-2},
		{"heun", 3.5, 1e-3},
		{"dpmpp_2m", 3.0, 1e-3},
		{"lms", 3.0, 1e-3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e25, e50, e100 := odeError(t, tc.name, 25), odeError(t, tc.name, 50), odeError(t, tc.name, 100)
			if e100 > tc.tol100 {
				t.Errorf("error at 100 steps %.3g > %.3g", e100, tc.tol100)
			}
			if e25/e50 < tc.minRatio {
				t.Errorf("error 25 steps %.3g, 50 steps %.3g: ratio %.2f < %.2f", e25, e50, e25/e50, tc.minRatio)
			}
		})
	}
}

// constNoise returns a constant field and counts its draws.
type constNoise struct {
	v     float32
	draws int
}

func (c *constNoise) Next(shape []int) (*nn.Tensor, error) {
	c.draws++
	t := nn.New(shape...)
	for i := range t.Data {
		t.Data[i] = c.v
	}
	return t, nil
}

func TestSingleSteps(t *testing.T) {
	// D(x; s) = 0.5 for every element; sigmas 2 -> 1 -> 0.
	half := func(x *nn.Tensor, sigma float64) (*nn.Tensor, error) {
		out := nn.New(x.Shape...)
		for i := range out.Data {
			out.Data[i] = 0.5
		}
		return out, nil
	}
	sigmas := []float64{2, 1, 0}
	x0 := 3.0
	down, up := AncestralStep(2, 1, 1) // up = sqrt(1*(4-1)/4) = sqrt(0.75), down = 0.5
	if math.Abs(up-math.Sqrt(0.75)) > 1e-15 || math.Abs(down-0.5) > 1e-15 {
		t.Fatalf("AncestralStep(2, 1) = %v, %v", down, up)
	}
	h := math.Log(2) // t(1) - t(2)
	for _, tc := range []struct {
		name  string
		want  float64 // after the first step (sigma 2 -> 1)
		draws int     // noise draws over both steps
	}{
		// euler: x + (x-0.5)/2 * (1-2) = 3 - 1.25
		{"euler", 1.75, 0},
		// euler_a: to sigma_down 0.5: 3 + (1.25)*(0.5-2) = 1.125; + 0.1*sqrt(0.75)
		{"euler_ancestral", 1.125 + 0.1*math.Sqrt(0.75), 1},
		// dpmpp_2m first step: (1/2)*x - expm1(-h)*D = 1.5 + 0.5*0.5
		{"dpmpp_2m", 1.75, 0},
		// heun: x2 = 1.75, d2 = (1.75-0.5)/1, d' = (1.25+1.25)/2 -> 3 - 1.25
		{"heun", 1.75, 0},
		// sde: (1/2)e^-h*3 + (1-e^-2h)*0.5 + 0.1*1*sqrt(1-e^-2h)
		{"dpmpp_2m_sde", 0.5*math.Exp(-h)*3 - math.Expm1(-2*h)*0.5 + 0.1*math.Sqrt(-math.Expm1(-2*h)), 1},
		{"lms", 1.75, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sampler, err := LookupSampler(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			noise := &constNoise{v: 0.1}
			var first float64
			out, err := sampler(half, nn.From([]float32{float32(x0)}, 1, 1, 1, 1), sigmas, SampleOptions{
				Noise: noise,
				Callback: func(s StepInfo) {
					if s.Step == 0 {
						first = float64(s.X.Data[0])
					}
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(first-tc.want) > 1e-6 {
				t.Errorf("after step 0: %v, want %v", first, tc.want)
			}
			if noise.draws != tc.draws {
				t.Errorf("noise draws %d, want %d (none at the last step)", noise.draws, tc.draws)
			}
			// The last step (to sigma 0) lands on the denoised value for
			// every sampler here except through its own update; all give 0.5.
			if math.Abs(float64(out.Data[0])-0.5) > 1e-6 {
				t.Errorf("final %v, want 0.5", out.Data[0])
			}
		})
	}
}

func TestLMSCoefficients(t *testing.T) {
	ts := []float64{10, 6, 3, 1.5, 0.5, 0}
	for i := range len(ts) - 1 {
		order := min(i+1, 4)
		sum := 0.0
		for j := range order {
			c, err := LinearMultistepCoeff(order, ts, i, j)
			if err != nil {
				t.Fatal(err)
			}
			sum += c
		}
		// The Lagrange basis sums to 1, so the coefficients sum to dt.
		if math.Abs(sum-(ts[i+1]-ts[i])) > 1e-12 {
			t.Errorf("step %d: coefficients sum %v, want %v", i, sum, ts[i+1]-ts[i])
		}
	}
	// order 2 at step 1, j = 0: integral of (tau-10)/(6-10) from 6 to 3 =
	// [(tau-10)^2/-8] from 6 to 3 = (49-16)/-8 = -4.125.
	if c, _ := LinearMultistepCoeff(2, ts, 1, 0); math.Abs(c+4.125) > 1e-12 {
		t.Errorf("coeff(2, 1, 0) = %v, want -4.125", c)
	}
	if _, err := LinearMultistepCoeff(3, ts, 1, 0); err == nil {
		t.Error("order 3 at step 1 accepted")
	}
}

func TestSamplerErrors(t *testing.T) {
	if _, err := LookupSampler("euler_b"); err == nil {
		t.Error("unknown sampler accepted")
	}
	calls := 0
	x := nn.New(1, 1, 1, 1)
	if _, err := SampleEuler(gaussDenoiser(&calls), x, []float64{1}, SampleOptions{}); err == nil {
		t.Error("one sigma accepted")
	}
	if _, err := SampleEulerAncestral(gaussDenoiser(&calls), x, []float64{2, 1, 0}, SampleOptions{}); err == nil {
		t.Error("ancestral sampler without noise source accepted")
	}
	if _, err := SampleEuler(gaussDenoiser(&calls), x, []float64{1, math.NaN(), 0}, SampleOptions{}); err == nil {
		t.Error("NaN sigma accepted")
	}
}
