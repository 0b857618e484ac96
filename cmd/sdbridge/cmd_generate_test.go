// cmd_generate_test.go checks 'generate' end to end on a tiny checkpoint it
// writes itself (random weights, SD1.5 key layout) and the golden CLIP
// vocabulary, and that bad input is refused with a message naming the
// problem; with the golden tiny models (skipped when absent) it runs LoRA,
// ControlNet and ELLA through real plugin processes (this test binary
// re-run as TestGeneratePluginProcess), alone and together.
package main

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/safetensors"
)

// clipDir is the golden set's CLIP vocabulary (vocab.json + merges.txt).
func clipDir(t *testing.T) string {
	t.Helper()
	wd, _ := os.Getwd()
	d := filepath.Join(wd, "..", "..", "..", "shared", "golden", "data", "clip")
	if env := os.Getenv("SDBRIDGE_GOLDEN_DIR"); env != "" {
		d = filepath.Join(env, "data", "clip")
	}
	if _, err := os.Stat(filepath.Join(d, "vocab.json")); err != nil {
		t.Skipf("CLIP vocabulary not found at %s (the shared golden set)", d)
	}
	return d
}

// tinyCheckpoint writes a random tiny SD1.5-layout checkpoint, keeping the
// tensors keep accepts.
func tinyCheckpoint(t *testing.T, keep func(name string) bool) string {
	t.Helper()
	var specs []safetensors.Spec
	for _, s := range models.Tiny(49408).Specs(safetensors.F16) {
		if keep == nil || keep(s.Name) {
			specs = append(specs, s)
		}
	}
	path := filepath.Join(t.TempDir(), "tiny.safetensors")
	if err := models.WriteRandom(path, specs, 1, nil); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestGenerateWritesPNG(t *testing.T) {
	clip := clipDir(t)
	model := tinyCheckpoint(t, nil)
	out := filepath.Join(t.TempDir(), "img.png")
	var stderr bytes.Buffer
	o, err := parseGenerateFlags([]string{"--model", model, "--clip-tokenizer", clip, "--prompt", "a (cat:1.2)",
		"--negative", "blurry", "--steps", "2", "--width", "64", "--height", "128", "--seed", "7", "--sampler", "euler_ancestral",
		"--scheduler", "karras", "--clip-skip", "2", "-o", out}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if err := generate(context.Background(), o, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	got, _ := pngParameters(t, out)
	want := "a (cat:1.2)\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 7, Size: 64x128, Model hash: "
	if !strings.HasPrefix(got, want) || !strings.Contains(got, "Model: tiny, Clip skip: 2, RNG: CPU") {
		t.Errorf("parameters = %q", got)
	}
	for _, s := range []string{"step 2/2", "it/s", "ETA", "wrote " + out} {
		if !strings.Contains(stderr.String(), s) {
			t.Errorf("stderr lacks %q:\n%s", s, stderr.String())
		}
	}
}

func TestGenerateBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"width not multiple of 8", []string{"--model", "m.safetensors", "--prompt", "x", "--width", "500"}, "multiples of 8"},
		{"empty prompt", []string{"--model", "m.safetensors", "--prompt", "  "}, "empty prompt"},
		{"unknown sampler", []string{"--model", "m.safetensors", "--prompt", "x", "--sampler", "euler_b"}, "valid: euler, euler_ancestral"},
		{"unknown scheduler", []string{"--model", "m.safetensors", "--prompt", "x", "--scheduler", "cosine"}, "valid: normal, karras"},
		{"no model", []string{"--prompt", "x"}, "--model FILE is required"},
		{"pickle", []string{"--model", "m.ckpt", "--prompt", "x"}, "convert it to .safetensors"},
		{"stray argument", []string{"--model", "m.safetensors", "--prompt", "a", "cat"}, "quote the prompt"},
		{"bad lora spec", []string{"--model", "m.safetensors", "--prompt", "x", "--lora", "a.safetensors:te=strong"}, "bad --lora"},
		{"missing lora", []string{"--model", "m.safetensors", "--prompt", "x", "--lora", "none.safetensors:0.8"}, "none.safetensors"},
		{"controlnet without image", []string{"--model", "m.safetensors", "--prompt", "x", "--controlnet", "cn.safetensors"}, "has no --control-image"},
		{"ella without t5", []string{"--model", "m.safetensors", "--prompt", "x", "--ella", "e.safetensors"}, "--ella needs --t5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseGenerateFlags(tc.args, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	if o, err := parseGenerateFlags([]string{"--model", "m.safetensors", "--prompt", "", "--allow-empty-prompt"}, &bytes.Buffer{}); err != nil || o == nil {
		t.Errorf("--allow-empty-prompt refused: %v", err)
	}
}

func TestGenerateRefusesCheckpoints(t *testing.T) {
	clip := clipDir(t)
	noVAE := tinyCheckpoint(t, func(n string) bool { return !strings.HasPrefix(n, "first_stage_model.") })
	sdxl := filepath.Join(t.TempDir(), "sdxl.safetensors")
	if err := models.WriteRandom(sdxl, []safetensors.Spec{
		{Name: "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", DType: safetensors.F16, Shape: []int{8, 4}},
		{Name: "model.diffusion_model.label_emb.0.0.weight", DType: safetensors.F16, Shape: []int{4, 4}},
	}, 1, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, model, want string
	}{
		{"no VAE", noVAE, "--vae FILE"},
		{"SDXL", sdxl, "SDXL"},
		{"missing file", filepath.Join(t.TempDir(), "none.safetensors"), "none.safetensors"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			height := "64"
			o, err := parseGenerateFlags([]string{"--model", tc.model, "--clip-tokenizer", clip, "--prompt", "x",
				"--steps", "1", "--width", "64", "--height", height, "-o", filepath.Join(t.TempDir(), "o.png")}, &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			err = generate(context.Background(), o, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestGenerateSeparateVAE(t *testing.T) {
	clip := clipDir(t)
	noVAE := tinyCheckpoint(t, func(n string) bool { return !strings.HasPrefix(n, "first_stage_model.") })
	var vaeSpecs []safetensors.Spec
	for _, s := range models.Tiny(49408).Specs(safetensors.F16) {
		if name, ok := strings.CutPrefix(s.Name, "first_stage_model."); ok {
			s.Name = name // a standalone VAE file has no prefix
			vaeSpecs = append(vaeSpecs, s)
		}
	}
	vae := filepath.Join(t.TempDir(), "vae.safetensors")
	if err := models.WriteRandom(vae, vaeSpecs, 2, nil); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "o.png")
	o, err := parseGenerateFlags([]string{"--model", noVAE, "--vae", vae, "--clip-tokenizer", clip, "--prompt", "x",
		"--steps", "1", "--width", "64", "--height", "64", "--noise", "a1111", "-o", out}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if err := generate(context.Background(), o, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if p, _ := pngParameters(t, out); !strings.Contains(p, "VAE: vae.safetensors") || !strings.Contains(p, "RNG: NV") {
		t.Errorf("parameters = %q", p)
	}
}

const generatePluginEnv = "SDBRIDGE_TEST_GENERATE_PLUGIN"

// TestGeneratePluginProcess is not a test: re-run with generatePluginEnv
// set to a built-in plugin's name, the test binary serves that plugin (as
// `sdbridge plugin NAME` would).
func TestGeneratePluginProcess(t *testing.T) {
	name := os.Getenv(generatePluginEnv)
	if name == "" {
		t.Skip("helper process serving a built-in plugin to the generate tests")
	}
	if err := runPlugin([]string{name}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// testPlugins is a supervisor whose built-in plugins are this test binary.
func testPlugins(t *testing.T) *host.Supervisor {
	t.Helper()
	sup, err := host.NewSupervisor(host.Options{LogOutput: &bytes.Buffer{}, CallTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sup.Close() })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range builtins() {
		if _, err := sup.Register(host.Spec{Name: b.name, Path: exe, Args: []string{"-test.run=^TestGeneratePluginProcess$"},
			Env: []string{generatePluginEnv + "=" + b.name}, BuiltIn: true}); err != nil {
			t.Fatal(err)
		}
	}
	return sup
}

// pngParameters reads a PNG file and its "parameters" text.
func pngParameters(t *testing.T, path string) (params string, file []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	texts, err := host.ReadPNGText(b)
	if err != nil {
		t.Fatal(err)
	}
	return texts["parameters"], b
}

// goldenModels is the shared golden set's models folder.
func goldenModels(t *testing.T) (clip, models string) {
	t.Helper()
	clip = clipDir(t)
	models = filepath.Join(filepath.Dir(filepath.Dir(clip)), "models")
	if _, err := os.Stat(filepath.Join(models, "sd15-tiny.safetensors")); err != nil {
		t.Skipf("golden tiny models absent: %v", err)
	}
	return clip, models
}

// generatePNG runs generate with args plus the common ones and returns the
// image bytes and its parameters text.
func generatePNG(t *testing.T, sup *host.Supervisor, args ...string) (pix []byte, params string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "o.png")
	var stderr bytes.Buffer
	o, err := parseGenerateFlags(append(args, "--steps", "2", "--width", "64", "--height", "64", "--seed", "3",
		"--sampler", "euler", "-o", out), &stderr)
	if err != nil {
		t.Fatal(err)
	}
	o.plugins = sup
	if err := generate(context.Background(), o, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	params, b := pngParameters(t, out)
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	r := img.Bounds()
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			cr, cg, cb, _ := img.At(x, y).RGBA()
			pix = append(pix, byte(cr>>8), byte(cg>>8), byte(cb>>8))
		}
	}
	return pix, params
}

func TestGenerateLoRA(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a plugin process")
	}
	clip, models := goldenModels(t)
	sup := testPlugins(t)
	base := []string{"--model", filepath.Join(models, "sd15-tiny.safetensors"), "--clip-tokenizer", clip, "--prompt", "a red cube"}
	plain, _ := generatePNG(t, sup, base...)
	lora := filepath.Join(models, "lora-kohya_ldm.safetensors")
	withLoRA, params := generatePNG(t, sup, append(base, "--lora", lora+":0.8:te=0.5")...)
	if bytes.Equal(plain, withLoRA) {
		t.Error("the LoRA changed no pixel")
	}
	for _, want := range []string{"a red cube <lora:lora-kohya_ldm:te=0.5:unet=0.8>\n", `Lora hashes: "lora-kohya_ldm: `} {
		if !strings.Contains(params, want) {
			t.Errorf("parameters lack %q:\n%s", want, params)
		}
	}
}

func TestGenerateRefusesSDXLLoRA(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a plugin process")
	}
	clip, models := goldenModels(t)
	sdxl := filepath.Join(t.TempDir(), "sdxl-lora.safetensors")
	zeros := make([]byte, 2*4*1280)
	if err := safetensors.WriteFile(sdxl, []safetensors.TensorData{
		{Spec: safetensors.Spec{Name: "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", DType: safetensors.F16, Shape: []int{4, 1280}}, Data: zeros},
		{Spec: safetensors.Spec{Name: "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", DType: safetensors.F16, Shape: []int{1280, 4}}, Data: zeros},
	}, nil); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	o, err := parseGenerateFlags([]string{"--model", filepath.Join(models, "sd15-tiny.safetensors"), "--clip-tokenizer", clip,
		"--prompt", "x", "--steps", "1", "--width", "64", "--height", "64", "--lora", sdxl, "-o", filepath.Join(t.TempDir(), "o.png")}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	o.plugins = testPlugins(t)
	err = generate(context.Background(), o, &stderr)
	if err == nil || !strings.Contains(err.Error(), "SDXL") || !strings.Contains(err.Error(), "sdxl-lora.safetensors") {
		t.Fatalf("error %v, want a refusal naming SDXL and the file", err)
	}
	if strings.Contains(stderr.String(), "step 1/") {
		t.Errorf("a step ran before the refusal:\n%s", stderr.String())
	}
}

func TestGenerateLoRAControlNetELLA(t *testing.T) {
	if testing.Short() {
		t.Skip("starts plugin processes")
	}
	clip, models := goldenModels(t)
	hint := filepath.Join(t.TempDir(), "hint.png")
	img := image.NewNRGBA(image.Rect(0, 0, 80, 64))
	for i := range img.Pix {
		img.Pix[i] = byte(i * 7)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hint, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t5tok := filepath.Join(filepath.Dir(models), "data", "t5", "spiece.model")
	_, params := generatePNG(t, testPlugins(t), "--model", filepath.Join(models, "sd15-tiny.safetensors"), "--clip-tokenizer", clip,
		"--prompt", "a red cube", "--negative", "blurry",
		"--lora", filepath.Join(models, "lora-kohya_diffusers.safetensors")+":0.8",
		"--controlnet", filepath.Join(models, "controlnet-tiny.safetensors"), "--control-image", hint,
		"--control-preprocess", "canny:50:150", "--control-strength", "0.9",
		"--ella", filepath.Join(models, "ella-tiny.safetensors"), "--t5", filepath.Join(models, "t5-tiny"), "--t5-tokenizer", t5tok)
	for _, want := range []string{"<lora:lora-kohya_diffusers:0.8>", "Lora hashes:",
		`ControlNet 0: "Module: canny, Model: controlnet-tiny, Weight: 0.9, Resize Mode: Crop and Resize, Threshold A: 50, Threshold B: 150, Guidance Start: 0, Guidance End: 1, Control Mode: Balanced"`,
		"ELLA: ella-tiny, ELLA mode: flexible, T5: t5-tiny"} {
		if !strings.Contains(params, want) {
			t.Errorf("parameters lack %q:\n%s", want, params)
		}
	}
}
