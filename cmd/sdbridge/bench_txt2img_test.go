// bench_txt2img_test.go: the "txt2img" bench part makes a whole image with
// LoRA + ControlNet + ELLA through the plugin processes (this test binary
// serves them) at the tiny layout and 64 px: on the CPU, where a second run
// reuses the --cache folder and gives the same image, and in a child
// process on the stand-in CUDA libraries and the kernel emulator. Its
// phases are positive, add up, and the PNG varies. Bad --steps are refused
// before anything is written.
package main

import (
	"bytes"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/plugins/ella"
)

// runTxt2Img runs the part on b (tiny shapes) and checks what every run
// must give; it returns the result and the PNG's bytes.
func runTxt2Img(t *testing.T, b *bench, device string) (benchResult, []byte) {
	t.Helper()
	res, err := benchTxt2Img(b)
	if err != nil {
		t.Fatal(err)
	}
	ph := res.Phases
	if ph == nil {
		t.Fatalf("result %+v has no phases", res)
	}
	if res.Device != device || res.Timer != timerHost || !strings.HasPrefix(res.Part, "txt2img") {
		t.Errorf("result %+v: want part txt2img on %s by %s", res, device, timerHost)
	}
	if ph.Size != 8*b.h || ph.Steps != b.txt2img.steps || ph.LoRARank != benchLoRARank {
		t.Errorf("phases size %d steps %d rank %d, want %d %d %d", ph.Size, ph.Steps, ph.LoRARank, 8*b.h, b.txt2img.steps, benchLoRARank)
	}
	for name, v := range map[string]float64{"load_s": ph.LoadSec, "lora_ms": ph.LoRAMillis, "plugin_load_s": ph.PluginLoadSec,
		"encode_ms": ph.EncodeMillis, "sampling_ms": ph.SamplingMillis, "step_mean_ms": ph.StepMeanMillis,
		"step_first_ms": ph.StepFirstMillis, "step_rest_mean_ms": ph.StepRestMeanMillis, "decode_ms": ph.DecodeMillis,
		"png_ms": ph.PNGMillis, "total_s": ph.TotalSec, "ms": res.Millis, "part load_s": res.LoadSec} {
		if !(v > 0) {
			t.Errorf("%s = %v, want > 0", name, v)
		}
	}
	// The image's ms is encode + sampling + decode + PNG; total_s adds the loads.
	sum := ph.EncodeMillis + ph.SamplingMillis + ph.DecodeMillis + ph.PNGMillis
	if res.Millis < sum || res.Millis > sum+50 {
		t.Errorf("ms %.2f, want encode + sampling + decode + png = %.2f (+ bookkeeping)", res.Millis, sum)
	}
	if total := res.LoadSec + res.Millis/1000; ph.TotalSec < total-1e-3 || ph.TotalSec > total+0.05 {
		t.Errorf("total_s %.3f, want load_s + ms = %.3f", ph.TotalSec, total)
	}
	if ph.StepMeanMillis*float64(ph.Steps) > ph.SamplingMillis+1e-6 {
		t.Errorf("step mean %.2f ms x %d steps exceeds sampling %.2f ms", ph.StepMeanMillis, ph.Steps, ph.SamplingMillis)
	}
	if ph.ELLAScheduleCalls < 1 || ph.ELLAScheduled+ph.ELLAStepCalls < ph.Steps || ph.ControlNetCalls < ph.Steps || ph.LoRADeviceTargets+ph.LoRAHostTargets == 0 {
		t.Errorf("ella schedule calls %d serving %d steps (+%d per-step calls), controlnet calls %d, LoRA targets %d+%d: want every plugin at work in %d steps",
			ph.ELLAScheduleCalls, ph.ELLAScheduled, ph.ELLAStepCalls, ph.ControlNetCalls, ph.LoRADeviceTargets, ph.LoRAHostTargets, ph.Steps)
	}
	if ph.ELLACalls != ph.ELLAScheduleCalls+ph.ELLAStepCalls {
		t.Errorf("ella calls %d, want schedule %d + per-step %d", ph.ELLACalls, ph.ELLAScheduleCalls, ph.ELLAStepCalls)
	}
	if !(ph.ELLAPluginMillis > 0 && ph.ControlNetMillis > 0) || ph.ELLAPluginMillis+ph.ControlNetMillis > ph.SamplingMillis {
		t.Errorf("plugin time ella %.2f + controlnet %.2f ms, want positive and within sampling %.2f ms",
			ph.ELLAPluginMillis, ph.ControlNetMillis, ph.SamplingMillis)
	}
	if ph.Image == "" {
		t.Fatal("no image kept with --cache")
	}
	file, err := os.ReadFile(ph.Image)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(file))
	if err != nil {
		t.Fatalf("%s: %v", ph.Image, err)
	}
	if r := img.Bounds(); r.Dx() != ph.Size || r.Dy() != ph.Size || len(file) != ph.PNGBytes {
		t.Errorf("PNG %dx%d of %d bytes, want %dx%d of %d", r.Dx(), r.Dy(), len(file), ph.Size, ph.Size, ph.PNGBytes)
	}
	levels := map[uint32]bool{}
	for y := range ph.Size {
		for x := range ph.Size {
			r, g, bl, _ := img.At(x, y).RGBA()
			levels[r>>8<<16|g>>8<<8|bl>>8] = true
		}
	}
	if len(levels) < 16 || ph.PixelStd < 1 {
		t.Errorf("image has %d colours, pixel std %.2f: want a varying image", len(levels), ph.PixelStd)
	}
	js, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", js)
	for _, k := range []string{`"phases"`, `"write_s"`, `"encode_ms"`, `"step_mean_ms"`, `"decode_ms"`, `"total_s"`, `"pixel_std"`} {
		if !bytes.Contains(js, []byte(k)) {
			t.Errorf("JSON %s has no %s", js, k)
		}
	}
	return res, file
}

func TestBenchTxt2ImgCPU(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts three plugin processes")
	}
	b := tinyBench(t, host.CPUDevice())
	b.txt2img = txt2imgSettings{steps: 3, cache: t.TempDir()}
	first, img := runTxt2Img(t, b, host.DeviceCPU)
	if first.Phases.Cached || !(first.Phases.WriteSec > 0) {
		t.Errorf("first run: cached %v, write_s %v; want the files written", first.Phases.Cached, first.Phases.WriteSec)
	}
	again, img2 := runTxt2Img(t, b, host.DeviceCPU)
	if !again.Phases.Cached || again.Phases.WriteSec != 0 {
		t.Errorf("second run: cached %v, write_s %v; want the --cache files reused", again.Phases.Cached, again.Phases.WriteSec)
	}
	if !bytes.Equal(img, img2) {
		t.Error("the run on the reused files gave another image")
	}
	dirs, err := filepath.Glob(filepath.Join(b.txt2img.cache, "txt2img-*"))
	if err != nil || len(dirs) != 1 {
		t.Errorf("--cache holds %v (%v), want one model folder", dirs, err)
	}
}

// TestBenchTxt2ImgRealShapes: at the real bench's shapes the connector the
// part writes is the released one, between FLAN-T5-XL and the SD1.5 U-Net,
// and the part's own vocabularies fit the embeddings.
func TestBenchTxt2ImgRealShapes(t *testing.T) {
	b := newBench(host.CPUDevice(), 512, 1)
	if got, want := b.txt2imgELLASpecs(), ella.ReleaseSpecs(); !reflect.DeepEqual(got, want) {
		t.Errorf("connector of %d tensors, want the release's %d", len(got), len(want))
	}
	if !reflect.DeepEqual(b.t5, flanT5XL) || b.layout.ContextDim != ella.ReleaseWidth || b.t5.DModel != ella.ReleaseInputDim {
		t.Errorf("t5 %+v, context dim %d: want FLAN-T5-XL and SD1.5", b.t5, b.layout.ContextDim)
	}
	dir := t.TempDir()
	vocab, err := writeDemoTokenizer(filepath.Join(dir, "vocab.json"), filepath.Join(dir, "merges.txt"))
	if err != nil {
		t.Fatal(err)
	}
	t5, err := writeDemoT5(filepath.Join(dir, "t5"))
	if err != nil {
		t.Fatal(err)
	}
	if vocab > b.layout.CLIPVocab || t5.VocabSize > b.t5.VocabSize {
		t.Errorf("CLIP vocabulary %d of %d, T5 pieces %d of %d", vocab, b.layout.CLIPVocab, t5.VocabSize, b.t5.VocabSize)
	}
}

func TestBenchTxt2ImgFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"zero steps", []string{"--parts", "txt2img", "--steps", "0"}, "want a step count in 1..1000"},
		{"steps not a number", []string{"--parts", "txt2img", "--steps", "x"}, "want a step count in 1..1000"},
		{"unknown part", []string{"--parts", "txt2im"}, "txt2img)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			err := runBench(append(tc.args, "--cache", dir, "--device", "cpu"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if left, _ := os.ReadDir(dir); len(left) != 0 {
				t.Errorf("refused run wrote %d entries into --cache", len(left))
			}
		})
	}
}

func TestBenchTxt2ImgCUDA(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	if testing.Short() {
		t.Skip("-short: runs a generation with three plugins on the CUDA emulator")
	}
	out := cudatest.RunChild(t, "TestBenchTxt2ImgCUDAChild", cudatest.Build(t))
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, `"phases"`) {
			t.Log(strings.TrimSpace(line))
		}
	}
}

func TestBenchTxt2ImgCUDAChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestBenchTxt2ImgCUDA")
	}
	dev, err := host.OpenDevice(host.DeviceCUDA, host.DTypeF16, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	b := tinyBench(t, dev)
	b.txt2img = txt2imgSettings{steps: 2, cache: t.TempDir()}
	res, _ := runTxt2Img(t, b, host.DeviceCUDA)
	if !strings.Contains(res.Phases.Image, "cuda0") {
		t.Errorf("image %s is not named for the device", res.Phases.Image)
	}
}
