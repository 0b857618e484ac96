// pipeline_device_test.go: a pipeline loaded onto a GPU (the stand-in
// libraries and the CUDA C emulator, in a child process) generates what
// the CPU pipeline generates, and SyncDevice carries a change of the CPU
// weights (what a LoRA patch does) to the device copies. weightTensors
// finds every bound weight of a model.
package host

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/golden"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// tinyPipeline loads the golden tiny checkpoint on dev (nil: the CPU).
func tinyPipeline(t *testing.T, dev *Device) (*Loaded, string) {
	t.Helper()
	dir := golden.Dir()
	ckpt := filepath.Join(dir, "models", "sd15-tiny.safetensors")
	p, err := LoadPipeline(ckpt, LoadOptions{Device: dev, PromptMode: PromptTruncate,
		CLIPVocab: filepath.Join(dir, "data", "clip", "vocab.json"), CLIPMerges: filepath.Join(dir, "data", "clip", "merges.txt")})
	if err != nil {
		if _, serr := os.Stat(ckpt); serr != nil {
			t.Skipf("golden tiny checkpoint not available: %v", serr)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, ckpt
}

func TestWeightTensors(t *testing.T) {
	p, ckpt := tinyPipeline(t, nil)
	f, err := safetensors.Open(ckpt)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	count := func(prefixes []string) int {
		n := 0
		for _, name := range f.Names() {
			for _, prefix := range prefixes {
				if strings.HasPrefix(name, prefix) && !strings.HasSuffix(name, "position_ids") {
					n++
				}
			}
		}
		return n
	}
	clip := p.Prompts.(*CLIPPrompts).Model
	for _, tc := range []struct {
		name     string
		model    any
		prefixes []string
	}{
		{"unet", p.UNet, []string{"model.diffusion_model."}},
		{"vae decoder", p.VAE, []string{"first_stage_model.decoder.", "first_stage_model.post_quant_conv."}},
		{"clip", clip, []string{"cond_stage_model.transformer.text_model."}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, want := len(weightTensors(tc.model)), count(tc.prefixes)
			if want == 0 {
				t.Fatalf("no %v tensors in %s", tc.prefixes, ckpt)
			}
			if got != want {
				t.Fatalf("weightTensors found %d tensors, the checkpoint has %d under %v", got, want, tc.prefixes)
			}
		})
	}
}

func TestWeightTensorsWalk(t *testing.T) {
	a, b, c := nn.New(1), nn.New(2), nn.New(3)
	type inner struct{ W *nn.Tensor }
	type outer struct {
		In     inner // by value: shares its address with the struct
		InP    *inner
		List   []*nn.Linear
		ByName map[string]*nn.Tensor
		Any    any
		Nil    *nn.Tensor
		hidden *nn.Tensor
	}
	o := &outer{In: inner{W: a}, List: []*nn.Linear{{Weight: b, Bias: a}}, ByName: map[string]*nn.Tensor{"c": c}, hidden: nn.New(4)}
	o.InP = &o.In // the same struct reached again through a pointer
	o.Any = o.List[0]
	firstFieldFirst := struct { // *inner and *outer at one address, *inner walked first
		P *inner
		O *outer
	}{&o.In, o}
	for _, tc := range []struct {
		name string
		m    any
		want []*nn.Tensor
	}{
		{"each once", o, []*nn.Tensor{a, b, c}},
		{"first field's pointer first", firstFieldFirst, []*nn.Tensor{a, b, c}},
		{"first field alone", &o.In, []*nn.Tensor{a}},
		{"nil model", (*outer)(nil), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := weightTensors(tc.m)
			if len(got) != len(tc.want) {
				t.Fatalf("found %d tensors, want %d", len(got), len(tc.want))
			}
			for _, w := range tc.want {
				if !slices.Contains(got, w) {
					t.Fatalf("tensor %v not found", w.Shape)
				}
			}
		})
	}
}

func TestPipelineOnDevice(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	if testing.Short() {
		t.Skip("-short: runs the tiny pipeline on the CUDA emulator")
	}
	cudatest.RunChild(t, "TestPipelineOnDeviceChild", cudatest.Build(t))
}

func TestPipelineOnDeviceChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestPipelineOnDevice")
	}
	dev, err := OpenDevice(DeviceCUDA, DTypeF32, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	cpu, _ := tinyPipeline(t, nil)
	gpu, _ := tinyPipeline(t, dev)
	if !gpu.OnGPU() {
		t.Fatalf("the pipeline did not move to %s", dev)
	}
	req := Request{Prompt: "a red fox", Negative: "blurry", Steps: 2, CFG: 5, Sampler: "euler",
		Schedule: "normal", Width: 32, Height: 32, Seed: 3}
	generate := func(p *Loaded) *Result {
		t.Helper()
		res, err := p.Generate(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// f32 on the device: the same arithmetic as the CPU up to summation order.
	const tol = 1e-4
	want := generate(cpu)
	if rel := relL2(generate(gpu).Image, want.Image); rel > tol {
		t.Fatalf("GPU image vs CPU: rel L2 %.3g > %g", rel, tol)
	}

	// A change of the CPU weights (what a LoRA patch writes) reaches the
	// device only through SyncDevice.
	w := cpu.UNet.(*models.UNet).OutConv.Weight               // [out, mc, 3, 3]
	gw := gpu.device.weights[0].(*models.UNet).OutConv.Weight // the GPU pipeline's CPU copy
	for i := range w.Data {
		w.Data[i] *= 1.5
		gw.Data[i] *= 1.5
	}
	want = generate(cpu)
	stale := generate(gpu)
	if rel := relL2(stale.Image, want.Image); rel <= tol {
		t.Fatalf("before SyncDevice the GPU already matches the patched CPU (rel L2 %.3g): the check cannot tell", rel)
	}
	if err := gpu.SyncDevice(); err != nil {
		t.Fatal(err)
	}
	if rel := relL2(generate(gpu).Image, want.Image); rel > tol {
		t.Fatalf("after SyncDevice: GPU image vs patched CPU: rel L2 %.3g > %g", rel, tol)
	}

	// Patchable on the device: every U-Net weight is a device patch target,
	// every text-encoder weight a host one.
	dir := golden.Dir()
	pp, err := LoadPipeline(filepath.Join(dir, "models", "sd15-tiny.safetensors"), LoadOptions{Device: dev, Patchable: true,
		CLIPVocab: filepath.Join(dir, "data", "clip", "vocab.json"), CLIPMerges: filepath.Join(dir, "data", "clip", "merges.txt")})
	if err != nil {
		t.Fatal(err)
	}
	onDev, onHost := pp.LoRATargets()
	wantDev, wantHost := 0, 0
	for i, m := range pp.device.weights {
		switch m.(type) {
		case *models.UNet:
			if !pp.device.onDevicePatch[i] {
				t.Fatal("the U-Net is not patched on the device")
			}
			wantDev += len(weightTensors(m))
		case *models.CLIPTextModel: // on the device once its CUDA type exposes its weights
			if pp.device.onDevicePatch[i] {
				wantDev += len(weightTensors(m))
			} else {
				wantHost += len(weightTensors(m))
			}
		}
	}
	if onDev != wantDev || onHost != wantHost {
		t.Errorf("patch targets: %d on the device, %d on the host; want the %d U-Net weights and the %d CLIP ones", onDev, onHost, wantDev, wantHost)
	}
	if err := pp.Close(); err != nil {
		t.Fatal(err)
	}
}

// relL2 is ||a-b|| / ||b|| over tensors.
func relL2(a, b *nn.Tensor) float64 { return nn.RelL2(a.Data, b.Data) }
