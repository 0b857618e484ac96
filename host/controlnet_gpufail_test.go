// controlnet_gpufail_test.go: the controlnet plugin dies in the middle of
// a generation on the GPU path (pipeline on the device, residuals written
// by the plugin into host device arenas over IPC; stand-in libraries and
// the CUDA C emulator, in a child process). The generation fails naming
// the plugin, its pid and its stderr tail; the device arenas of the failed
// generation are unregistered and their device memory freed; the next
// generation restarts the plugin, which maps the arenas again, and gives
// the clean run's latent (a ControlNetSource is one generation's: its
// device arenas are made, mapped and dropped with it).
package host

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ebitengine/purego"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
)

// fakeDeviceUsed returns the stand-in driver's bytes of live device
// allocations in this process (fakecuda.c's sdbFakeSetMemLimit, which
// also sets the limit: -1 keeps the variable's, here none).
func fakeDeviceUsed(t *testing.T) func() uint64 {
	t.Helper()
	h, err := purego.Dlopen(os.Getenv("SDBRIDGE_CUDA_DRIVER"), purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		t.Fatalf("stand-in driver: %v", err)
	}
	var set func(n int64) uint64
	purego.RegisterLibFunc(&set, h, "sdbFakeSetMemLimit")
	return func() uint64 { return set(-1) }
}

// deviceArenaIDs lists the registered device arenas.
func deviceArenaIDs() map[uint32]string {
	arenaMu.RLock()
	defer arenaMu.RUnlock()
	out := map[uint32]string{}
	for id, a := range arenaByID {
		if a.OnDevice() {
			out[id] = a.Name
		}
	}
	return out
}

// logChildErrors logs the child's "error:" lines (the messages under test).
func logChildErrors(t *testing.T, out string) {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "error: ") {
			t.Log(strings.TrimSpace(line))
		}
	}
}

// waitExited waits until process pid is gone or a zombie.
func waitExited(t *testing.T, pid int) {
	t.Helper()
	for range 500 {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		if f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("plugin process %d still running 5 s after SIGQUIT", pid)
}

func TestControlNetPluginCrashOnDevice(t *testing.T) {
	fx := loadCNFixture(t)
	if testing.Short() {
		t.Skip("runs four small generations on the CUDA C emulator; not with -short")
	}
	if !cudatest.InChild() {
		logChildErrors(t, cudatest.RunChild(t, "TestControlNetPluginCrashOnDevice", cudatest.Build(t)))
		return
	}
	dev, err := OpenDevice(DeviceCUDA, DTypeF32, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	pl, _ := tinyPipeline(t, dev)
	_, p := newControlNetPlugin(t)
	p.SetDevice(dev.ID())
	used := fakeDeviceUsed(t)
	ctx := context.Background()
	newSource := func() *ControlNetSource {
		opt := fx.options(3, 1, 5)
		opt.GPU = pl.GPU()
		src, err := NewControlNetSource(ctx, p, opt, []ControlNetUnit{{Path: fx.file, Hint: fx.hint, Strength: 1, End: 1}})
		if err != nil {
			t.Fatal(err)
		}
		return src
	}
	generate := func(src *ControlNetSource, progress func(Progress)) (*Result, error) {
		return pl.Generate(ctx, Request{Prompt: "a house", Negative: "blurry", Steps: 3, CFG: 5, Sampler: "euler", Schedule: "normal",
			Width: 64, Height: 64, Seed: 1, Residuals: src, SkipDecode: true, Progress: progress})
	}
	// crashAtStep1 sends the plugin SIGQUIT after the first step: the Go
	// runtime writes its goroutines to stderr and exits, so the host sees
	// a crash with a stderr tail at a fixed point of the run.
	crashAtStep1 := func(pr Progress) {
		if pr.Step == 1 {
			pid := p.Pid()
			syscall.Kill(pid, syscall.SIGQUIT)
			waitExited(t, pid)
		}
	}
	sameLatent := func(t *testing.T, got, want *Result) {
		t.Helper()
		var num, den float64
		for i, w := range want.Latent.Data {
			d := float64(got.Latent.Data[i] - w)
			num += d * d
			den += float64(w) * float64(w)
		}
		if rel := math.Sqrt(num / den); !(rel <= 1e-5) {
			t.Fatalf("latent after the restart differs from the clean run's: rel_l2 %g", rel)
		}
	}
	checkCrash := func(t *testing.T, err error, pid int) {
		t.Helper()
		var perr *PluginError
		if err == nil || !errors.As(err, &perr) || !errors.Is(err, ErrCrashed) || perr.Plugin != "controlnet" {
			t.Fatalf("generation with a crashed plugin: err %v, want a PluginError wrapping ErrCrashed for \"controlnet\"", err)
		}
		msg := err.Error()
		if strings.TrimSpace(perr.Stderr) == "" {
			t.Errorf("no stderr tail in the error (the Go runtime writes the goroutines on SIGQUIT): %s", msg)
		}
		for _, w := range []string{`plugin "controlnet"`, fmt.Sprintf("pid %d", pid), "last stderr lines:", perr.Stderr} {
			if !strings.Contains(msg, w) {
				t.Errorf("error does not name %q: %s", w, msg)
			}
		}
		t.Logf("error: %.600s", msg)
	}

	arenas0, used0 := deviceArenaIDs(), used()
	src := newSource()
	want, err := generate(src, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a := deviceArenaIDs(); len(a) <= len(arenas0) {
		t.Fatalf("the source holds no device arenas (%v): not the device path", a)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if a, u := deviceArenaIDs(), used(); len(a) != len(arenas0) || u != used0 {
		t.Fatalf("a clean generation left device arenas %v (before %v) and %d bytes of device memory (before %d)", a, arenas0, u, used0)
	}

	t.Run("source per generation", func(t *testing.T) {
		src := newSource()
		pid := p.Pid()
		_, err := generate(src, crashAtStep1)
		checkCrash(t, err, pid)
		if err := src.Close(); err != nil {
			t.Errorf("closing the source after the crash: %v", err)
		}
		if a, u := deviceArenaIDs(), used(); len(a) != len(arenas0) || u != used0 {
			t.Errorf("after the crash: device arenas %v registered (before %v), %d bytes of device memory (before %d)", a, arenas0, u, used0)
		}
		src = newSource()
		defer src.Close()
		got, err := generate(src, nil)
		if err != nil {
			t.Fatalf("host unusable after the crash: %v", err)
		}
		if p.Pid() == pid || p.Pid() == 0 {
			t.Fatalf("plugin not restarted (pid %d -> %d, %d starts)", pid, p.Pid(), p.Starts())
		}
		sameLatent(t, got, want)
	})

}

// TestControlNetPluginOutOfGPUMemory starts the controlnet plugin with a
// 1 MiB device (SDBRIDGE_FAKE_CUDA_MEM_LIMIT in its environment only): the
// generation fails with the plugin's name and its out-of-memory message
// (bytes asked for, free and total) followed by the host's out-of-memory
// hint for the pipeline's dtype (f16), the host's device memory and arenas
// come back to their level, and a plugin with room generates.
func TestControlNetPluginOutOfGPUMemory(t *testing.T) {
	fx := loadCNFixture(t)
	if testing.Short() {
		t.Skip("runs two small generations on the CUDA C emulator; not with -short")
	}
	if !cudatest.InChild() {
		logChildErrors(t, cudatest.RunChild(t, "TestControlNetPluginOutOfGPUMemory", cudatest.Build(t)))
		return
	}
	dev, err := OpenDevice(DeviceCUDA, DTypeF16, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	pl, _ := tinyPipeline(t, dev)
	used := fakeDeviceUsed(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		limit string
		fails bool
	}{
		{"1 MiB", "1048576", true},
		{"unlimited", "0", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewSupervisor(Options{LogOutput: &strings.Builder{}, CallTimeout: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			p, err := s.Register(Spec{Name: "controlnet", Path: exe, Args: []string{"-test.run=^TestControlNetPluginProcess$"},
				Env: []string{controlNetHelperEnv + "=1", "SDBRIDGE_FAKE_CUDA_MEM_LIMIT=" + tc.limit}, BuiltIn: true})
			if err != nil {
				t.Fatal(err)
			}
			p.SetDevice(dev.ID())
			arenas0, used0 := deviceArenaIDs(), used()
			opt := fx.options(2, 1, 5)
			opt.GPU = pl.GPU()
			src, err := NewControlNetSource(ctx, p, opt, []ControlNetUnit{{Path: fx.file, Hint: fx.hint, Strength: 1, End: 1}})
			if err == nil {
				_, err = pl.Generate(ctx, Request{Prompt: "a house", Steps: 2, CFG: 5, Sampler: "euler", Schedule: "normal",
					Width: 64, Height: 64, Seed: 1, Residuals: src, SkipDecode: true})
				if cerr := src.Close(); cerr != nil {
					t.Errorf("closing the source: %v", cerr)
				}
			}
			if !tc.fails {
				if err != nil {
					t.Fatalf("generation with a plugin that has room: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("generation with a 1 MiB plugin device succeeded")
			}
			t.Logf("error: %.700s", err)
			for _, w := range []string{`plugin "controlnet"`, "out of GPU memory", "bytes", " free of 1.0 MiB", "; " + oomHint(DTypeF16)} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not name %q: %v", w, err)
				}
			}
			if a, u := deviceArenaIDs(), used(); len(a) != len(arenas0) || u != used0 {
				t.Errorf("after the failure: device arenas %v (before %v), %d bytes of device memory (before %d)", a, arenas0, u, used0)
			}
		})
	}
}
