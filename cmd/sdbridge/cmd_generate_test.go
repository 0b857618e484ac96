// cmd_generate_test.go checks 'generate' end to end on a tiny checkpoint it
// writes itself (random weights, SD1.5 key layout) and the golden CLIP
// vocabulary, and that bad input is refused with a message naming the
// problem.
package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	texts, err := host.ReadPNGText(b)
	if err != nil {
		t.Fatal(err)
	}
	want := "a (cat:1.2)\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 7, Size: 64x128, Model hash: "
	if got := texts["parameters"]; !strings.HasPrefix(got, want) || !strings.Contains(got, "Model: tiny, Clip skip: 2, RNG: CPU") {
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
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	texts, err := host.ReadPNGText(b)
	if err != nil {
		t.Fatal(err)
	}
	if p := texts["parameters"]; !strings.Contains(p, "VAE: vae.safetensors") || !strings.Contains(p, "RNG: NV") {
		t.Errorf("parameters = %q", p)
	}
}
