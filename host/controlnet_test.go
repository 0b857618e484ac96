// controlnet_test.go: the ControlNet adapter against the real controlnet
// plugin in a separate process (this test binary re-executed, helper-process
// pattern) on the golden tiny models: residuals equal to the in-process
// network times strength on both CFG halves, guess mode (soft weights, cond
// rows only, uncond rows not computed), several nets summed, start/end, the
// split-CFG call order, the refusals (hint size, architecture), and a plugin
// crash mid-generation that fails the generation clearly and leaves the host
// able to generate again.
package host

import (
	"context"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/golden"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/controlnet"
	"github.com/sdbridge/sdbridge/safetensors"
)

const controlNetHelperEnv = "SDBRIDGE_TEST_CONTROLNET_PLUGIN"

// TestControlNetPluginProcess is not a test: re-executed with
// controlNetHelperEnv set, the test binary serves the controlnet plugin.
func TestControlNetPluginProcess(t *testing.T) {
	if os.Getenv(controlNetHelperEnv) != "1" {
		t.Skip("helper process for the controlnet plugin tests")
	}
	controlnet.Serve()
	os.Exit(0)
}

// newControlNetPlugin starts the controlnet plugin as a real process.
func newControlNetPlugin(t testing.TB) (*Supervisor, *Plugin) {
	t.Helper()
	s, err := NewSupervisor(Options{LogOutput: io.Discard, CallTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Register(Spec{Name: "controlnet", Path: exe, Args: []string{"-test.run=^TestControlNetPluginProcess$"},
		Env: []string{controlNetHelperEnv + "=1"}, BuiltIn: true})
	if err != nil {
		t.Fatal(err)
	}
	return s, p
}

// cnFixture is the golden tiny U-Net config and ControlNet.
type cnFixture struct {
	file string
	cfg  models.UNetConfig
	net  *models.ControlNet
	hint *nn.Tensor // [1, 3, 64, 64]
}

func loadCNFixture(t testing.TB) *cnFixture {
	t.Helper()
	dir := golden.Dir()
	f, err := safetensors.Open(filepath.Join(dir, "models", "sd15-tiny.safetensors"))
	if err != nil {
		t.Skipf("golden models not available: %v", err)
	}
	defer f.Close()
	cfg, err := models.InferUNetConfig(models.NewWeights(f).Sub("model.diffusion_model."))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "models", "controlnet-tiny.safetensors")
	cf, err := safetensors.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer cf.Close()
	net, _, err := models.LoadControlNet(cf)
	if err != nil {
		t.Fatal(err)
	}
	hint := nn.New(1, 3, 64, 64)
	for i := range hint.Data {
		hint.Data[i] = float32((i*7919)%256) / 255
	}
	return &cnFixture{file: file, cfg: cfg, net: net, hint: hint}
}

func pseudoRandom(seed int, shape ...int) *nn.Tensor {
	t := nn.New(shape...)
	for i := range t.Data {
		t.Data[i] = float32(math.Sin(float64(seed*1000+i)*12.9898)) * 0.8
	}
	return t
}

func (fx *cnFixture) options(steps, batch int, cfgScale float64) ControlNetOptions {
	sched, err := NewDiscreteSchedule(models.SD15AlphasCumprod())
	if err != nil {
		panic(err)
	}
	return ControlNetOptions{UNet: fx.cfg, Schedule: sched, ScheduleName: "normal", Steps: steps, Batch: batch, CFG: cfgScale, Width: 64, Height: 64}
}

// reference runs the net in-process on x, t, ctx: residual i times scale(i).
func (fx *cnFixture) reference(t *testing.T, x *nn.Tensor, ts []float32, ctx *nn.Tensor, scale func(i int) float32) models.Residuals {
	t.Helper()
	res, err := fx.net.Forward(x, fx.hint, ts, ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range models.ResidualNames(fx.cfg) {
		nn.Scale(res[name], scale(i))
	}
	return res
}

// compareRows checks got against want on rows [r0, r1) of every residual;
// want nil means zero.
func compareRows(t *testing.T, cfg models.UNetConfig, got, want models.Residuals, r0, r1 int) {
	t.Helper()
	for _, name := range models.ResidualNames(cfg) {
		g := got[name]
		if g == nil {
			t.Fatalf("residual %q missing", name)
		}
		per := len(g.Data) / g.Shape[0]
		var num, den float64
		for i := r0 * per; i < r1*per; i++ {
			w := 0.0
			if want != nil {
				w = float64(want[name].Data[i-r0*per])
			}
			d := float64(g.Data[i]) - w
			num += d * d
			den += w * w
		}
		if want == nil {
			if num != 0 {
				t.Fatalf("residual %q rows [%d, %d): want zero, |got| = %g", name, r0, r1, math.Sqrt(num))
			}
			continue
		}
		// 1e-4 as the golden component cases: the plugin process may batch
		// rows differently and pick another GEMM backend (nn calibrates
		// OpenBLAS against pure Go per process).
		if rel := math.Sqrt(num / den); rel > 1e-4 || math.IsNaN(rel) {
			t.Fatalf("residual %q rows [%d, %d): rel_l2 %g", name, r0, r1, rel)
		}
	}
}

func TestControlNetSource(t *testing.T) {
	fx := loadCNFixture(t)
	_, p := newControlNetPlugin(t)
	ctx := context.Background()
	const steps = 4
	x := pseudoRandom(1, 2, 4, 8, 8) // [uncond, cond]
	cx := pseudoRandom(2, 2, 77, fx.cfg.ContextDim)
	xu, xc := nn.From(x.Data[:256], 1, 4, 8, 8), nn.From(x.Data[256:], 1, 4, 8, 8)
	cu, cc := nn.From(cx.Data[:len(cx.Data)/2], 1, 77, fx.cfg.ContextDim), nn.From(cx.Data[len(cx.Data)/2:], 1, 77, fx.cfg.ContextDim)
	opt := fx.options(steps, 1, 7)
	sched := opt.Schedule
	sig, _ := sched.SamplingSigmas("normal", steps)
	t0 := float32(sched.SigmaToT(sig[0]))
	t2 := float32(sched.SigmaToT(sig[2]))
	one := func(int) float32 { return 1 }

	t.Run("strength on both halves", func(t *testing.T) {
		src, err := NewControlNetSource(ctx, p, opt, []ControlNetUnit{{Path: fx.file, Hint: fx.hint, Strength: 0.7, End: 1}})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		got, err := src.Residuals(ctx, x, []float32{t0, t0}, cx)
		if err != nil {
			t.Fatal(err)
		}
		s := func(int) float32 { return 0.7 }
		compareRows(t, fx.cfg, got, fx.reference(t, xu, []float32{t0}, cu, s), 0, 1)
		compareRows(t, fx.cfg, got, fx.reference(t, xc, []float32{t0}, cc, s), 1, 2)
		if st := src.Stats(); st.Calls != 1 {
			t.Fatalf("%d plugin calls, want 1 batched call", st.Calls)
		}
	})

	t.Run("guess mode", func(t *testing.T) {
		src, err := NewControlNetSource(ctx, p, opt, []ControlNetUnit{{Path: fx.file, Hint: fx.hint, Strength: 2, End: 1, Guess: true}})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		got, err := src.Residuals(ctx, x, []float32{t0, t0}, cx)
		if err != nil {
			t.Fatal(err)
		}
		compareRows(t, fx.cfg, got, nil, 0, 1)
		soft := func(i int) float32 { return float32(2 * math.Pow(0.825, float64(12-i))) }
		compareRows(t, fx.cfg, got, fx.reference(t, xc, []float32{t0}, cc, soft), 1, 2)
	})

	t.Run("two nets summed", func(t *testing.T) {
		units := []ControlNetUnit{
			{Path: fx.file, Hint: fx.hint, Strength: 0.5, End: 1, Guess: true},
			{Path: filepath.Join(filepath.Dir(fx.file), "controlnet-tiny-bare.safetensors"), Hint: fx.hint, Strength: 1, End: 1},
		}
		src, err := NewControlNetSource(ctx, p, opt, units)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		got, err := src.Residuals(ctx, x, []float32{t0, t0}, cx)
		if err != nil {
			t.Fatal(err)
		}
		compareRows(t, fx.cfg, got, fx.reference(t, xu, []float32{t0}, cu, one), 0, 1)
		both := func(i int) float32 { return 1 + float32(0.5*math.Pow(0.825, float64(12-i))) }
		compareRows(t, fx.cfg, got, fx.reference(t, xc, []float32{t0}, cc, both), 1, 2)
	})

	t.Run("start and end", func(t *testing.T) {
		src, err := NewControlNetSource(ctx, p, opt, []ControlNetUnit{{Path: fx.file, Hint: fx.hint, Strength: 1, Start: 0.5, End: 1}})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		got, err := src.Residuals(ctx, x, []float32{t0, t0}, cx)
		if err != nil || got != nil {
			t.Fatalf("step 0 of 4 with start 0.5: residuals %v, err %v; want none", got != nil, err)
		}
		if got, err = src.Residuals(ctx, x, []float32{t2, t2}, cx); err != nil || got == nil {
			t.Fatalf("step 2 of 4: residuals %v, err %v", got != nil, err)
		}
		if st := src.Stats(); st.Calls != 1 || st.Skipped != 1 {
			t.Fatalf("stats %+v, want 1 call and 1 skipped", st)
		}
	})

	t.Run("split cfg calls", func(t *testing.T) {
		src, err := NewControlNetSource(ctx, p, opt, []ControlNetUnit{{Path: fx.file, Hint: fx.hint, Strength: 1, End: 1, CondOnly: true}})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		got, err := src.Residuals(ctx, xu, []float32{t0}, cu) // uncond first
		if err != nil {
			t.Fatal(err)
		}
		if got != nil {
			t.Fatal("cond-only net controlled the uncond call")
		}
		if got, err = src.Residuals(ctx, xc, []float32{t0}, cc); err != nil {
			t.Fatal(err)
		}
		compareRows(t, fx.cfg, got, fx.reference(t, xc, []float32{t0}, cc, one), 0, 1)
	})

	t.Run("one hint per image", func(t *testing.T) {
		h2 := pseudoRandom(5, 2, 3, 64, 64) // [2, 3, 64, 64]
		for i := range h2.Data {
			h2.Data[i] = 0.5 + h2.Data[i]/2
		}
		x4 := pseudoRandom(6, 4, 4, 8, 8) // [uncond 0, uncond 1, cond 0, cond 1]
		c4 := pseudoRandom(7, 4, 77, fx.cfg.ContextDim)
		src, err := NewControlNetSource(ctx, p, fx.options(steps, 2, 7), []ControlNetUnit{{Path: fx.file, Hint: h2, Strength: 1, End: 1}})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		got, err := src.Residuals(ctx, x4, []float32{t0, t0, t0, t0}, c4)
		if err != nil {
			t.Fatal(err)
		}
		per, perC, perH := 4*8*8, 77*fx.cfg.ContextDim, 3*64*64
		for r := range 4 {
			img := r % 2
			want, err := fx.net.Forward(nn.From(x4.Data[r*per:(r+1)*per], 1, 4, 8, 8), nn.From(h2.Data[img*perH:(img+1)*perH], 1, 3, 64, 64),
				[]float32{t0}, nn.From(c4.Data[r*perC:(r+1)*perC], 1, 77, fx.cfg.ContextDim))
			if err != nil {
				t.Fatal(err)
			}
			compareRows(t, fx.cfg, got, want, r, r+1)
		}
	})

	t.Run("global pool", func(t *testing.T) {
		src, err := NewControlNetSource(ctx, p, opt, []ControlNetUnit{{Path: fx.file, Hint: fx.hint, Strength: 1, End: 1, GlobalPool: true}})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		got, err := src.Residuals(ctx, x, []float32{t0, t0}, cx)
		if err != nil {
			t.Fatal(err)
		}
		want := fx.reference(t, xc, []float32{t0}, cc, one)
		for _, r := range want {
			hw := r.Shape[2] * r.Shape[3]
			for q := 0; q < len(r.Data); q += hw {
				var m float64
				for _, v := range r.Data[q : q+hw] {
					m += float64(v) / float64(hw)
				}
				for j := range hw {
					r.Data[q+j] = float32(m)
				}
			}
		}
		compareRows(t, fx.cfg, got, nil, 0, 1)
		compareRows(t, fx.cfg, got, want, 1, 2)
	})

	t.Run("sigma range", func(t *testing.T) {
		src, err := NewControlNetSource(ctx, p, opt, []ControlNetUnit{{Path: fx.file, Hint: fx.hint, Strength: 1, Start: 0.5, End: 1, SigmaRange: true}})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		if got, err := src.Residuals(ctx, x, []float32{t0, t0}, cx); err != nil || got != nil {
			t.Fatalf("t %.1f above (1-0.5)*999: residuals %v, err %v; want none", t0, got != nil, err)
		}
		if got, err := src.Residuals(ctx, x, []float32{t2, t2}, cx); err != nil || got == nil {
			t.Fatalf("t %.1f below (1-0.5)*999: residuals %v, err %v", t2, got != nil, err)
		}
	})

	t.Run("prompt override", func(t *testing.T) {
		other := pseudoRandom(9, 1, 20, fx.cfg.ContextDim)
		src, err := NewControlNetSource(ctx, p, opt, []ControlNetUnit{{Path: fx.file, Hint: fx.hint, Strength: 1, End: 1, Context: other}})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		got, err := src.Residuals(ctx, x, []float32{t0, t0}, cx)
		if err != nil {
			t.Fatal(err)
		}
		compareRows(t, fx.cfg, got, fx.reference(t, xu, []float32{t0}, cu, one), 0, 1)
		compareRows(t, fx.cfg, got, fx.reference(t, xc, []float32{t0}, other, one), 1, 2)
	})
}

func TestControlNetSourceRefusals(t *testing.T) {
	fx := loadCNFixture(t)
	_, p := newControlNetPlugin(t)
	ctx := context.Background()
	sd15 := fx.options(4, 1, 7)
	sd15.UNet.ContextDim = 768
	tests := []struct {
		name string
		opt  ControlNetOptions
		unit ControlNetUnit
		want string
	}{
		{"hint size", fx.options(4, 1, 7), ControlNetUnit{Path: fx.file, Hint: nn.New(1, 3, 32, 48), End: 1}, "control image is 48x32 px, the generation is 64x64"},
		{"hint channels", fx.options(4, 1, 7), ControlNetUnit{Path: fx.file, Hint: nn.New(1, 4, 64, 64), End: 1}, "want [1, 3, H, W]"},
		{"range", fx.options(4, 1, 7), ControlNetUnit{Path: fx.file, Hint: fx.hint, Start: 0.8, End: 0.2}, "start 0.8 / end 0.2"},
		{"other architecture", sd15, ControlNetUnit{Path: fx.file, Hint: fx.hint, End: 1}, "not an SD 1.x network"},
		{"missing file", fx.options(4, 1, 7), ControlNetUnit{Path: "/nonexistent/cn.safetensors", Hint: fx.hint, End: 1}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := NewControlNetSource(ctx, p, tt.opt, []ControlNetUnit{tt.unit})
			if err == nil {
				src.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

// TestControlNetPluginCrash kills the plugin process during a generation:
// the generation fails naming the plugin, and the next one (plugin
// restarted) matches an undisturbed run (to float rounding: a new process
// may pick another GEMM backend, see nn/blas.go calibrateBLAS).
func TestControlNetPluginCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three small generations")
	}
	fx := loadCNFixture(t)
	dir := golden.Dir()
	pl, err := LoadPipeline(filepath.Join(dir, "models", "sd15-tiny.safetensors"), LoadOptions{
		CLIPVocab: filepath.Join(dir, "data", "clip", "vocab.json"), CLIPMerges: filepath.Join(dir, "data", "clip", "merges.txt")})
	if err != nil {
		t.Skipf("golden pipeline not available: %v", err)
	}
	defer pl.Close()
	_, p := newControlNetPlugin(t)
	ctx := context.Background()
	generate := func(progress func(Progress)) (*Result, error) {
		src, err := NewControlNetSource(ctx, p, fx.options(3, 1, 5), []ControlNetUnit{{Path: fx.file, Hint: fx.hint, Strength: 1, End: 1}})
		if err != nil {
			return nil, err
		}
		defer src.Close()
		return pl.Generate(ctx, Request{Prompt: "a house", Negative: "blurry", Steps: 3, CFG: 5, Sampler: "euler", Schedule: "normal",
			Width: 64, Height: 64, Seed: 1, Residuals: src, SkipDecode: true, Progress: progress})
	}
	want, err := generate(nil)
	if err != nil {
		t.Fatal(err)
	}
	pid := p.Pid()
	_, err = generate(func(pr Progress) {
		if pr.Step == 1 {
			syscall.Kill(p.Pid(), syscall.SIGKILL)
		}
	})
	var perr *PluginError
	if err == nil || !errors.As(err, &perr) || !errors.Is(err, ErrCrashed) || perr.Plugin != "controlnet" {
		t.Fatalf("generation with a killed plugin: err %v, want a PluginError wrapping ErrCrashed for \"controlnet\"", err)
	}
	t.Logf("error: %v", err)
	got, err := generate(nil)
	if err != nil {
		t.Fatalf("host unusable after the crash: %v", err)
	}
	if p.Pid() == pid || p.Starts() < 2 {
		t.Fatalf("plugin not restarted (pid %d -> %d, %d starts)", pid, p.Pid(), p.Starts())
	}
	var num, den float64
	for i, w := range want.Latent.Data {
		d := float64(got.Latent.Data[i] - w)
		num += d * d
		den += float64(w) * float64(w)
	}
	if rel := math.Sqrt(num / den); !(rel <= 1e-5) {
		t.Fatalf("latent after restart differs from before: rel_l2 %g", rel)
	}
}
