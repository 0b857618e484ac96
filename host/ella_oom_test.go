// ella_oom_test.go: the ella plugin process runs out of GPU memory (a
// 64 KiB stand-in device, SDBRIDGE_FAKE_CUDA_MEM_LIMIT in its environment
// only; the host's device is unlimited), and the error the user sees
// carries the plugin's message and the host's out-of-memory hint for the
// pipeline's dtype. TestPluginOOMHint checks the hint itself, without a
// device.
package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/golden"
	"github.com/sdbridge/sdbridge/nn"
)

func TestPluginOOMHint(t *testing.T) {
	oom := &cuda.OutOfMemoryError{Requested: 1 << 20, Free: 1 << 10, Total: 1 << 20}
	pluginErr := fmt.Errorf("controlnet 0 (net.safetensors): %w", &PluginError{Plugin: "controlnet", Err: errors.New(oom.Error())})
	for _, tc := range []struct {
		name     string
		err      error
		g        *nn.GPU
		wantHint string // "" = unchanged
	}{
		{"plugin OOM, f16", pluginErr, &nn.GPU{DType: nn.GPUF16}, oomHint(DTypeF16)},
		{"plugin OOM, f32", pluginErr, &nn.GPU{DType: nn.GPUF32}, oomHint(DTypeF32)},
		{"plugin OOM, no GPU", pluginErr, nil, oomHint("")},
		{"other plugin error", errors.New("controlnet 0: file not found"), &nn.GPU{}, ""},
		{"host OOM already explained", explainOOM(oom, "for x", DTypeF16), &nn.GPU{}, ""},
		{"nil", nil, &nn.GPU{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := explainPluginOOM(tc.err, tc.g)
			if tc.wantHint == "" {
				if got != tc.err {
					t.Fatalf("explainPluginOOM changed %v into %v", tc.err, got)
				}
				return
			}
			if !strings.HasSuffix(got.Error(), "; "+tc.wantHint) || !strings.HasPrefix(got.Error(), tc.err.Error()) {
				t.Fatalf("got %q, want %q + the hint %q", got, tc.err, tc.wantHint)
			}
			var pe *PluginError
			if !errors.As(got, &pe) || pe.Plugin != "controlnet" {
				t.Fatalf("the plugin's error is not reachable through %v", got)
			}
			if again := explainPluginOOM(got, tc.g); again != got {
				t.Fatalf("explained twice: %v", again)
			}
		})
	}
	// The hints are the host's own (device.go's deviceOOMError).
	for _, dt := range []string{DTypeF16, DTypeF32} {
		if msg := explainOOM(oom, "for x", dt).Error(); !strings.Contains(msg, "; "+oomHint(dt)+" (") {
			t.Errorf("host OOM message %q does not carry oomHint(%q) = %q", msg, dt, oomHint(dt))
		}
	}
}

func TestELLAPluginOutOfGPUMemory(t *testing.T) {
	dir := golden.Dir()
	opt := ELLAOptions{
		ELLA: filepath.Join(dir, "models", "ella-tiny.safetensors"), T5: filepath.Join(dir, "models", "t5-tiny"),
		T5Tokenizer: filepath.Join(dir, "data", "t5", "spiece.model"), Heads: 8, Mode: ELLAFlexible,
	}
	if _, err := os.Stat(opt.ELLA); err != nil {
		t.Skipf("golden ELLA models not available: %v", err)
	}
	if testing.Short() {
		t.Skip("starts the ella plugin on the stand-in CUDA libraries; not with -short")
	}
	if !cudatest.InChild() {
		logChildErrors(t, cudatest.RunChild(t, "TestELLAPluginOutOfGPUMemory", cudatest.Build(t)))
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
		Env: []string{ellaGPUFailHelperEnv + "=1", "SDBRIDGE_FAKE_CUDA_MEM_LIMIT=65536"}, BuiltIn: true})
	if err != nil {
		t.Fatal(err)
	}
	p.SetDevice(dev.ID())
	ctx := context.Background()
	opt.ContextDim = pl.UNetConfig.ContextDim
	opt.GPU = pl.GPU()
	cond, err := NewELLAConditioner(ctx, p, opt, "a red cube", "blurry")
	if err == nil {
		_, err = cond.ContextGPU(ctx, 999, true)
		cond.Close()
	}
	if err == nil {
		t.Fatal("ELLA with a 64 KiB plugin device succeeded")
	}
	t.Logf("error: %.700s", err)
	for _, w := range []string{`plugin "ella"`, "out of GPU memory", " free of 64.0 KiB", "; " + oomHint(DTypeF32)} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not name %q: %v", w, err)
		}
	}
}
