// schedule_test.go checks the discrete SD1.5 schedule, the t<->sigma maps and
// the named sampling schedules against values printed by PyTorch (float64,
// k-diffusion's formulas) once, by hand; PyTorch is not needed to run them.
package host

import (
	"math"
	"testing"

	"github.com/sdbridge/sdbridge/models"
)

func sd15(t *testing.T) *DiscreteSchedule {
	t.Helper()
	s, err := NewDiscreteSchedule(models.SD15AlphasCumprod())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func closeRel(got, want, rel float64) bool {
	return math.Abs(got-want) <= rel*math.Max(math.Abs(want), 1e-12)
}

func TestSD15AlphasCumprod(t *testing.T) {
	ac := models.SD15AlphasCumprod()
	for _, tc := range []struct {
		i    int
		want float32
	}{{0, 0.9991499781608582}, {500, 0.27633267641067505}, {999, 0.004660098347812891}} {
		if ac[tc.i] != tc.want {
			t.Errorf("alphas_cumprod[%d] = %v, want %v", tc.i, ac[tc.i], tc.want)
		}
	}
	s := sd15(t)
	if !closeRel(s.SigmaMin(), 0.02916753316555422, 1e-12) || !closeRel(s.SigmaMax(), 14.614641489691584, 1e-12) {
		t.Errorf("sigma_min, sigma_max = %v, %v", s.SigmaMin(), s.SigmaMax())
	}
}

func TestSamplingSigmas(t *testing.T) {
	s := sd15(t)
	for _, tc := range []struct {
		name  string
		steps int
		want  []float64
	}{
		{"normal", 6, []float64{14.614641489691587, 5.092407551448319, 2.2797302428065356, 1.1628645216357554, 0.5711888863403723, 0.02916753316555422, 0}},
		{"karras", 6, []float64{14.614641489691582, 6.082156600102386, 2.232160753124392, 0.692573782698251, 0.16975793456581192, 0.029167533165554215, 0}},
		{"exponential", 4, []float64{14.614641489691587, 1.8400318659300703, 0.2316661185309409, 0.02916753316555422, 0}},
		{"simple", 5, []float64{14.614641489691584, 5.08776311101631, 2.2764630071141876, 1.1605783158440892, 0.5692848990548915, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.SamplingSigmas(tc.name, tc.steps)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("len %d, want %d", len(got), len(tc.want))
			}
			for i := range got {
				if !closeRel(got[i], tc.want[i], 1e-9) {
					t.Errorf("sigma[%d] = %.17g, want %.17g", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestDDIMUniform(t *testing.T) {
	s := sd15(t)
	got, err := s.SamplingSigmas("ddim_uniform", 20)
	if err != nil {
		t.Fatal(err)
	}
	// timesteps 951, 901, ..., 1 then 0 (ComfyUI ddim_scheduler).
	if len(got) != 21 || got[20] != 0 || got[0] != s.Sigmas[951] || got[19] != s.Sigmas[1] {
		t.Errorf("ddim_uniform(20) = %v", got)
	}
}

func TestSigmaToT(t *testing.T) {
	s := sd15(t)
	for _, tc := range []struct{ sigma, want float64 }{
		{14.6146, 998.999531899097},
		{1.0, 353.8904075655516},
		{0.5, 169.31476485965646},
		{0.03, 0.08082901313467203},
		{0.01, 0},   // below sigma_min: clamped
		{20.0, 999}, // above sigma_max: clamped
	} {
		if got := s.SigmaToT(tc.sigma); !closeRel(got, tc.want, 1e-9) && math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("SigmaToT(%v) = %.15g, want %.15g", tc.sigma, got, tc.want)
		}
	}
	for _, tt := range []float64{0, 0.25, 17.5, 500, 998.9, 999} {
		if got := s.SigmaToT(s.TToSigma(tt)); math.Abs(got-tt) > 1e-9 {
			t.Errorf("SigmaToT(TToSigma(%v)) = %v", tt, got)
		}
	}
}

func TestScheduleErrors(t *testing.T) {
	s := sd15(t)
	for _, tc := range []struct {
		name  string
		steps int
	}{{"normal", 0}, {"bogus", 10}} {
		if _, err := s.SamplingSigmas(tc.name, tc.steps); err == nil {
			t.Errorf("SamplingSigmas(%q, %d): no error", tc.name, tc.steps)
		}
	}
	if _, err := NewDiscreteSchedule([]float32{0.9, 0.95}); err == nil {
		t.Error("increasing alphas_cumprod accepted")
	}
	if _, err := NewDiscreteSchedule([]float32{0.9, 0}); err == nil {
		t.Error("alphas_cumprod 0 accepted")
	}
}
