// ella_gpufail_test.go: the ella plugin process dies between two
// generations that share one ELLAConditioner on the GPU path (pipeline and
// context buffers on the device, stand-in libraries and the CUDA C
// emulator, in a child process). The conditioner's device arenas outlive
// the process: the next generation restarts the plugin, which re-encodes
// the prompts and maps those arenas afresh, and gives the first
// generation's latent; the dead process's arenas are not left registered.
package host

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/golden"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/ella"
)

const ellaGPUFailHelperEnv = "SDBRIDGE_TEST_ELLA_GPUFAIL_PLUGIN"

// TestELLAGPUFailPluginProcess is not a test: re-executed with
// ellaGPUFailHelperEnv set, the test binary serves the ella plugin.
func TestELLAGPUFailPluginProcess(t *testing.T) {
	if os.Getenv(ellaGPUFailHelperEnv) != "1" {
		t.Skip("helper process for TestELLAPluginCrashOnDevice")
	}
	ella.Serve()
	os.Exit(0)
}

func TestELLAPluginCrashOnDevice(t *testing.T) {
	dir := golden.Dir()
	opt := ELLAOptions{
		ELLA: filepath.Join(dir, "models", "ella-tiny.safetensors"), T5: filepath.Join(dir, "models", "t5-tiny"),
		T5Tokenizer: filepath.Join(dir, "data", "t5", "spiece.model"), Heads: 8, Mode: ELLAFlexible,
	}
	if _, err := os.Stat(opt.ELLA); err != nil {
		t.Skipf("golden ELLA models not available: %v", err)
	}
	if testing.Short() {
		t.Skip("runs two small generations with ELLA on the CUDA C emulator; not with -short")
	}
	if !cudatest.InChild() {
		cudatest.RunChild(t, "TestELLAPluginCrashOnDevice", cudatest.Build(t))
		return
	}
	dev, err := OpenDevice(DeviceCUDA, DTypeF32, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	pl, _ := tinyPipeline(t, dev)
	s, err := NewSupervisor(Options{LogOutput: io.Discard, CallTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Register(Spec{Name: "ella", Path: exe, Args: []string{"-test.run=^TestELLAGPUFailPluginProcess$"},
		Env: []string{ellaGPUFailHelperEnv + "=1"}, BuiltIn: true})
	if err != nil {
		t.Fatal(err)
	}
	p.SetDevice(dev.ID())
	ctx := context.Background()
	arenas0 := deviceArenaIDs()
	opt.ContextDim = pl.UNetConfig.ContextDim
	opt.GPU = pl.GPU()
	cond, err := NewELLAConditioner(ctx, p, opt, "a red cube", "blurry")
	if err != nil {
		t.Fatal(err)
	}
	generate := func() *nn.Tensor {
		t.Helper()
		res, err := pl.Generate(ctx, Request{Prompt: "a red cube", Negative: "blurry", Steps: 2, CFG: 5, Sampler: "euler",
			Schedule: "normal", Width: 64, Height: 64, Seed: 1, Conditioner: cond, SkipDecode: true})
		if err != nil {
			t.Fatal(err)
		}
		return res.Latent
	}
	want := generate()
	if a := deviceArenaIDs(); len(a) <= len(arenas0) {
		t.Fatalf("the conditioner holds no device arenas (%v): not the device path", a)
	}
	pid, starts := p.Pid(), p.Starts()
	syscall.Kill(pid, syscall.SIGQUIT)
	waitExited(t, pid)
	got := generate()
	if p.Starts() != starts+1 || p.Pid() == pid {
		t.Fatalf("plugin not restarted once (pid %d -> %d, starts %d -> %d)", pid, p.Pid(), starts, p.Starts())
	}
	if r := nn.RelL2(got.Data, want.Data); !(r <= 1e-5) {
		t.Fatalf("latent after the ella plugin's restart differs from the first generation's: rel L2 %g", r)
	}
	if err := cond.Close(); err != nil {
		t.Fatal(err)
	}
	if a := deviceArenaIDs(); len(a) != len(arenas0) {
		t.Fatalf("device arenas %v registered after the conditioner closed (before %v)", a, arenas0)
	}
}
