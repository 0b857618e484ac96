// ella_schedule_test.go checks ELLA's whole-schedule precomputation
// (ella_schedule.go): with the fake plugin, PrepareSchedule makes one
// batched call per half and Context serves the schedule's timesteps from
// it while any other timestep takes a per-step call; with the real plugin
// code in process on the golden tiny T5 and connector (CPU), a pipeline
// run through the schedule gives the U-Net bit-identical contexts (and
// latents) to the per-step path for euler, euler_ancestral, dpmpp_2m and
// heun, in flexible and concat mode, with one batched call per half and no
// per-step call; a sampler evaluating between the schedule's sigmas (as
// dpm2 does) falls back to per-step calls with the per-step values.
package host

import (
	"context"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sdbridge/sdbridge/golden"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/ella"
)

func TestELLAConditionerSchedule(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		opt     ELLAOptions
		uncond  bool
		ts      []float32 // PrepareSchedule's timesteps
		batches int       // batched calls expected
		steps   []float32 // Context calls (cond and, with uncond, uncond)
		perStep int       // of which outside the schedule (per half)
		want    func(t float32) float32
	}{
		{
			name: "flexible", uncond: true, ts: []float32{999, 900.25, 900.25, 500.5},
			batches: 2, steps: []float32{999, 900.25, 700, 500.5}, perStep: 1,
			want: func(t float32) float32 { return t },
		},
		{
			name: "cond only (cfg 1)", uncond: false, ts: []float32{999, 500.5},
			batches: 1, steps: []float32{999, 500.5}, perStep: 0,
			want: func(t float32) float32 { return t },
		},
		{
			name: "int timesteps", opt: ELLAOptions{IntTimesteps: true}, uncond: true, ts: []float32{999.9, 999.1, 500.5},
			batches: 2, steps: []float32{999.5, 500.7, 300.2}, perStep: 1,
			want: func(t float32) float32 { return float32(math.Trunc(float64(t))) },
		},
		{
			name: "concat", opt: ELLAOptions{Mode: ELLAConcat, CLIP: fakeCLIP{}}, uncond: true, ts: []float32{999, 500.5},
			batches: 2, steps: []float32{999, 10, 500.5}, perStep: 1,
			want: func(t float32) float32 { return t },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeELLA{shape: []int{1, 2, 4}}
			o := tc.opt
			o.ELLA, o.T5, o.ContextDim = "e", "t", 4
			e, err := NewELLAConditioner(ctx, f, o, "cond", "uncond!")
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			if err := e.PrepareSchedule(ctx, tc.ts, tc.uncond); err != nil {
				t.Fatal(err)
			}
			if st := e.Stats(); st.ScheduleCalls != tc.batches || st.Calls != tc.batches || st.StepCalls != 0 {
				t.Fatalf("after PrepareSchedule: stats %+v, want %d batched calls", st, tc.batches)
			}
			if want := e.scheduleTimes(tc.ts); !slices.Equal(f.batches[0], want) {
				t.Errorf("batched call timesteps %v, want %v", f.batches[0], want)
			}
			halves := []bool{true}
			if tc.uncond {
				halves = append(halves, false)
			}
			for _, step := range tc.steps {
				for _, cond := range halves {
					c, err := e.Context(ctx, step, cond)
					if err != nil {
						t.Fatal(err)
					}
					want := tc.want(step)
					if cond {
						want += 1000
					}
					if c.Data[0] != want || c.Data[2*4-1] != want {
						t.Errorf("t=%v cond=%v: context %v, want ELLA rows %v", step, cond, c.Data, want)
					}
					if o.Mode == ELLAConcat {
						clip := -float32(len("uncond!"))
						if cond {
							clip = -float32(len("cond"))
						}
						if c.Shape[1] != 5 || c.Data[2*4] != clip || c.Data[len(c.Data)-1] != clip {
							t.Errorf("t=%v cond=%v: concat context %v %v, want CLIP rows %v after the ELLA rows", step, cond, c.Shape, c.Data, clip)
						}
					}
				}
			}
			wantStep := tc.perStep * len(halves)
			st := e.Stats()
			if st.StepCalls != wantStep || st.ScheduleCalls != tc.batches || st.Scheduled != len(tc.steps)*len(halves)-wantStep {
				t.Errorf("stats %+v: want %d step calls, %d batched, %d served from the schedule", st, wantStep, tc.batches, len(tc.steps)*len(halves)-wantStep)
			}
		})
	}
}

func TestELLAConditionerScheduleChunksAndReplace(t *testing.T) {
	// A long schedule takes calls of at most ellaScheduleChunk rows; a
	// second PrepareSchedule replaces the first (reusing the rows when
	// they fit, growing them when not).
	ctx := context.Background()
	f := &fakeELLA{shape: []int{1, 2, 4}}
	e, err := NewELLAConditioner(ctx, f, ELLAOptions{ELLA: "e", T5: "t", ContextDim: 4}, "cond", "uncond")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ramp := func(n int) []float32 {
		ts := make([]float32, n)
		for i := range ts {
			ts[i] = float32(n-i) + 0.5
		}
		return ts
	}
	for _, tc := range []struct {
		n     int
		sizes []int // timesteps per call, per half
	}{
		{2*ellaScheduleChunk + 3, []int{ellaScheduleChunk, ellaScheduleChunk, 3}},
		{5, []int{5}},
		{ellaScheduleChunk + 1, []int{ellaScheduleChunk, 1}},
	} {
		f.batches = nil
		before := e.Stats()
		ts := ramp(tc.n)
		if err := e.PrepareSchedule(ctx, ts, false); err != nil {
			t.Fatal(err)
		}
		var sizes []int
		for _, b := range f.batches {
			sizes = append(sizes, len(b))
		}
		if !slices.Equal(sizes, tc.sizes) {
			t.Errorf("%d timesteps: calls of %v timesteps, want %v", tc.n, sizes, tc.sizes)
		}
		for _, step := range []float32{ts[0], ts[tc.n/2], ts[tc.n-1]} {
			c, err := e.Context(ctx, step, true)
			if err != nil {
				t.Fatal(err)
			}
			if c.Data[0] != step+1000 || c.Data[7] != step+1000 {
				t.Errorf("%d timesteps: t=%v: context %v, want %v", tc.n, step, c.Data, step+1000)
			}
		}
		if st := e.Stats(); st.StepCalls != before.StepCalls || st.Scheduled != before.Scheduled+3 {
			t.Errorf("%d timesteps: stats %+v after %+v: want 3 steps served, no step call", tc.n, st, before)
		}
	}
}

func TestELLAConditionerScheduleAfterRestart(t *testing.T) {
	// A crash during the batched call is retried on a fresh process; the
	// rows then survive a later crash (they live in the host's memory).
	ctx := context.Background()
	f := &restartingELLA{fakeELLA: fakeELLA{shape: []int{1, 2, 4}}}
	e, err := NewELLAConditioner(ctx, f, ELLAOptions{ELLA: "e", T5: "t", ContextDim: 4}, "cond", "uncond")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	f.crashNext = true
	if err := e.PrepareSchedule(ctx, []float32{999, 500}, true); err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct {
		t     float32
		cond  bool
		crash bool
		want  float32
	}{{250, false, true, 250}, {999, true, false, 1999}, {999, false, false, 999}, {500, true, false, 1500}} {
		f.crashNext = s.crash
		c, err := e.Context(ctx, s.t, s.cond)
		if err != nil {
			t.Fatal(err)
		}
		if c.Data[0] != s.want {
			t.Errorf("t=%v cond=%v: context %v, want %v", s.t, s.cond, c.Data[0], s.want)
		}
	}
	if st := e.Stats(); st.ScheduleCalls != 3 || st.StepCalls != 2 || st.Scheduled != 3 || st.Reencoded != 3 {
		t.Errorf("stats %+v: want 3 batched calls and 2 step calls (one retried each), 3 served, 3 prompts re-encoded", st)
	}
}

// perStepOnly hides PrepareSchedule: the pipeline then takes the per-step
// path, as before schedules existed.
type perStepOnly struct{ c Conditioner }

func (p perStepOnly) Context(ctx context.Context, t float32, cond bool) (*nn.Tensor, error) {
	return p.c.Context(ctx, t, cond)
}

// contextEps is an eps model whose prediction depends on its context (so
// the trajectory does too); it records a copy of every context it sees.
type contextEps struct{ seen [][]float32 }

func (m *contextEps) Forward(x *nn.Tensor, _ []float32, ctx *nn.Tensor, _ models.Residuals) (*nn.Tensor, error) {
	m.seen = append(m.seen, slices.Clone(ctx.Data))
	out := nn.New(x.Shape...) // [N, C, H, W]
	per := len(x.Data) / x.Shape[0]
	cper := len(ctx.Data) / ctx.Shape[0]
	for b := range x.Shape[0] {
		var s float64
		for _, v := range ctx.Data[b*cper : (b+1)*cper] {
			s += float64(v)
		}
		for i := range per {
			out.Data[b*per+i] = 0.5*x.Data[b*per+i] + float32(s/float64(cper))
		}
	}
	return out, nil
}

// tinyELLAOptions are the golden tiny T5 + connector, or a skip.
func tinyELLAOptions(t *testing.T) ELLAOptions {
	dir := golden.Dir()
	opt := ELLAOptions{
		ELLA: filepath.Join(dir, "models", "ella-tiny.safetensors"), T5: filepath.Join(dir, "models", "t5-tiny"),
		T5Tokenizer: filepath.Join(dir, "data", "t5", "spiece.model"), Heads: 8, ContextDim: 128, CLIP: wideCLIP{},
	}
	if _, err := ella.Load(ella.Config{ELLAPath: opt.ELLA, T5Dir: opt.T5, T5Tokenizer: opt.T5Tokenizer, Heads: 8}); err != nil {
		t.Skipf("golden ELLA models not available: %v", err)
	}
	return opt
}

// ellaRun is one pipeline generation with an ELLA conditioner: the
// contexts the U-Net saw, the latent and the conditioner's stats.
type ellaRun struct {
	seen   [][]float32
	latent []float32
	stats  ELLAStats
}

// runELLAPipeline generates with opt's conditioner, through the schedule
// or (perStep) through per-step calls only.
func runELLAPipeline(t *testing.T, plug ConditionerPlugin, opt ELLAOptions, sampler string, steps int, perStep bool) ellaRun {
	t.Helper()
	ctx := context.Background()
	e, err := NewELLAConditioner(ctx, plug, opt, "a red cube", "blurry")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var c Conditioner = e
	if perStep {
		c = perStepOnly{e}
	}
	m := &contextEps{}
	p := &Pipeline{UNet: m, VAE: halfDecoder{}, Schedule: sd15(t), LatentChannels: 4, Downscale: 8}
	res, err := p.Generate(ctx, Request{Steps: steps, CFG: 7, Sampler: sampler, Schedule: "normal",
		Width: 16, Height: 8, Seed: 7, Conditioner: c, SkipDecode: true})
	if err != nil {
		t.Fatal(err)
	}
	return ellaRun{seen: m.seen, latent: res.Latent.Data, stats: e.Stats()}
}

func TestELLAScheduleMatchesPerStep(t *testing.T) {
	opt := tinyELLAOptions(t)
	plug := inProcessELLA{ella.New(nil)}
	for _, mode := range []string{ELLAFlexible, ELLAConcat} {
		for _, tc := range []struct {
			sampler string
			steps   int
			evals   int // U-Net calls
			fresh   int // of which at a timestep other than the last one's (the rest reuse it)
		}{
			{"euler", 20, 20, 20},
			{"euler_ancestral", 6, 6, 6},
			{"dpmpp_2m", 6, 6, 6},
			{"heun", 6, 11, 6}, // 2 per step but the last, the second at the next step's sigma
		} {
			t.Run(mode+"/"+tc.sampler, func(t *testing.T) {
				o := opt
				o.Mode = mode
				want := runELLAPipeline(t, plug, o, tc.sampler, tc.steps, true)
				got := runELLAPipeline(t, plug, o, tc.sampler, tc.steps, false)
				if len(got.seen) != tc.evals || len(want.seen) != tc.evals {
					t.Fatalf("U-Net calls: %d with the schedule, %d per step; want %d", len(got.seen), len(want.seen), tc.evals)
				}
				for i := range want.seen {
					if !slices.Equal(got.seen[i], want.seen[i]) {
						t.Fatalf("U-Net call %d: context differs from the per-step path (rel L2 %.3g)", i, nn.RelL2(got.seen[i], want.seen[i]))
					}
				}
				if !slices.Equal(got.latent, want.latent) {
					t.Errorf("latent differs from the per-step path")
				}
				if st := want.stats; st.StepCalls != 2*tc.fresh || st.ScheduleCalls != 0 {
					t.Errorf("per-step path: stats %+v, want %d step calls", st, 2*tc.fresh)
				}
				st := got.stats
				if st.ScheduleCalls != 2 || st.StepCalls != 0 || st.Calls != 2 || st.Scheduled != 2*tc.fresh {
					t.Errorf("schedule path: stats %+v, want 1 batched call per half, 0 step calls, %d served", st, 2*tc.fresh)
				}
			})
		}
	}
}

// sampleMidpoints is a test sampler that, like dpm2, also evaluates the
// model between the schedule's sigmas (at their geometric mean; not on
// the last step, whose next sigma is 0).
func sampleMidpoints(model Denoiser, x *nn.Tensor, sigmas []float64, _ SampleOptions) (*nn.Tensor, error) {
	x = x.Clone() // [B, C, H, W]
	for i := range len(sigmas) - 1 {
		at := []float64{sigmas[i]}
		if sigmas[i+1] > 0 {
			at = append(at, math.Sqrt(sigmas[i]*sigmas[i+1]))
		}
		for _, s := range at {
			d, err := model(x, s) // [B, C, H, W]
			if err != nil {
				return nil, err
			}
			for j := range x.Data {
				x.Data[j] += 0.1 * (d.Data[j] - x.Data[j])
			}
		}
	}
	return x, nil
}

func TestELLAScheduleFallsBackOffSchedule(t *testing.T) {
	opt := tinyELLAOptions(t)
	plug := inProcessELLA{ella.New(nil)}
	ctx := context.Background()
	sched := sd15(t)
	sigmas, err := sched.SamplingSigmas("normal", 4)
	if err != nil {
		t.Fatal(err)
	}
	noise := nn.New(1, 4, 1, 2) // [1, 4, 1, 2]
	for i := range noise.Data {
		noise.Data[i] = float32(i) - 3
	}
	var runs [2]ellaRun
	for k, prepare := range []bool{false, true} {
		e, err := NewELLAConditioner(ctx, plug, opt, "a red cube", "blurry")
		if err != nil {
			t.Fatal(err)
		}
		m := &contextEps{}
		den := &CFGDenoiser{Model: m, Schedule: sched, Scale: 7, Conditioner: e, Ctx: ctx}
		if prepare {
			if err := e.PrepareSchedule(ctx, den.ScheduleTimesteps(sigmas), true); err != nil {
				t.Fatal(err)
			}
		}
		x, err := sampleMidpoints(den.Denoise, noise, sigmas, SampleOptions{})
		if err != nil {
			t.Fatal(err)
		}
		runs[k] = ellaRun{seen: m.seen, latent: x.Data, stats: e.Stats()}
		e.Close()
	}
	want, got := runs[0], runs[1]
	for i := range want.seen {
		if !slices.Equal(got.seen[i], want.seen[i]) {
			t.Fatalf("U-Net call %d: context differs from the per-step path", i)
		}
	}
	if !slices.Equal(got.latent, want.latent) {
		t.Error("latent differs from the per-step path")
	}
	// 4 schedule sigmas and 3 midpoints, 2 halves each.
	if len(want.seen) != 7 {
		t.Fatalf("%d U-Net calls, want 7", len(want.seen))
	}
	if st := got.stats; st.ScheduleCalls != 2 || st.StepCalls != 6 || st.Scheduled != 8 {
		t.Errorf("stats %+v: want 2 batched calls, 6 per-step calls at the midpoints, 8 steps served", st)
	}
}
