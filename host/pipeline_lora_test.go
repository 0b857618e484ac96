// pipeline_lora_test.go: LoRA swaps on a pipeline loaded onto the GPU
// (stand-ins + emulator, in a child): each swap and the reset log the
// device originals' counters at debug level, the second swap reads the
// originals made by the first (device copies, nothing over PCIe), and
// Close frees the originals with the weights' arena set.
package host

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/golden"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

func TestPipelineLoRAOnDevice(t *testing.T) {
	if !cudatest.InChild() {
		if testing.Short() {
			t.Skip("-short: loads the tiny pipeline on the CUDA emulator")
		}
		t.Log(cudatest.RunChild(t, "TestPipelineLoRAOnDevice", cudatest.Build(t)))
		return
	}
	dir := golden.Dir()
	lora := filepath.Join(dir, "models", "lora-kohya_ldm.safetensors")
	if _, err := os.Stat(lora); err != nil {
		t.Skipf("golden LoRA not available: %v", err)
	}
	dev, err := OpenDevice(DeviceCUDA, DTypeF16, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	p, err := LoadPipeline(filepath.Join(dir, "models", "sd15-tiny.safetensors"), LoadOptions{Device: dev, Patchable: true,
		CLIPVocab: filepath.Join(dir, "data", "clip", "vocab.json"), CLIPMerges: filepath.Join(dir, "data", "clip", "merges.txt")})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			p.Close()
		}
	}()
	var logs bytes.Buffer
	sup, err := NewSupervisor(Options{LogOutput: &logs, LogLevel: hclog.Debug, CallTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer sup.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sup.Register(Spec{Name: "lora", Path: exe, Args: []string{"-test.run=^$"}, Env: []string{"SDBRIDGE_TEST_PLUGIN=lora"}, BuiltIn: true}); err != nil {
		t.Fatal(err)
	}
	set := p.device.patchSet
	if set == nil {
		t.Fatal("no device patch targets on a patchable GPU pipeline")
	}
	ctx := context.Background()
	steps := []struct {
		name  string
		loras []LoRASpec
	}{
		{"patch", []LoRASpec{{Path: lora, UNet: 0.8, TE: 0.5}}},
		{"swap (one pass from the device originals)", []LoRASpec{{Path: lora, UNet: -0.4, TE: 1}}},
		{"reset", nil},
	}
	for i, st := range steps {
		if err := p.ApplyLoRAs(ctx, sup, st.loras); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if n := strings.Count(logs.String(), "LoRA swap on the device"); n != i+1 {
			t.Fatalf("%s: %d debug lines for %d swaps:\n%s", st.name, n, i+1, logs.String())
		}
	}
	o := DeviceOriginalsOf(set)
	if o == nil {
		t.Fatal("no device originals kept for the patch set")
	}
	s := o.Stats()
	t.Logf("after patch, swap and reset: %s", s)
	if !strings.Contains(logs.String(), s.String()) {
		t.Fatalf("the last debug line does not carry the originals' counters %q:\n%s", s, logs.String())
	}
	// The patch restored every touched weight once (making its original),
	// the swap restored none (one pass), the reset restored them again.
	if s.Originals == 0 || s.HostUploads != 0 || s.Fallbacks != 0 || s.DeviceCopies != 2*s.Originals {
		t.Fatalf("originals: %s; want %d device copies (patch + reset), no host upload", s, 2*s.Originals)
	}
	closed = true
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if DeviceOriginalsOf(set) != nil {
		t.Fatal("Close left the device originals registered")
	}
	if err := o.Restore("w", nil, sdk.F16, nil)(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("restore after Close = %v, want an error saying the originals are closed", err)
	}
}
