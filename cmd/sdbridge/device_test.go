// device_test.go: the --device flags of the commands. Bad values are
// refused before any file is read; without a driver, --device cuda is a
// clear error and auto runs on the CPU with one line saying so; in a child
// process on the stand-in CUDA libraries (the kernel emulator), generate
// and merge with --device cuda give what they give on the CPU.
package main

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/safetensors"
)

func TestDeviceFlagProblems(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown device", []string{"--device", "tpu"}, "valid: cpu, cuda, auto"},
		{"unknown dtype", []string{"--cuda-dtype", "bf16"}, "valid: f16, f32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseGenerateFlags(append([]string{"--model", "m.safetensors", "--prompt", "x"}, tc.args...), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("generate: error %v, want one containing %q", err, tc.want)
			}
			err = runBench(append([]string{"--parts", "clip"}, tc.args...))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("bench: error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestGenerateDeviceWithoutDriver(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in a stand-in child")
	}
	if cuda.Available() == nil {
		t.Skip("a CUDA device is present")
	}
	clip, models := goldenModels(t)
	model := filepath.Join(models, "sd15-tiny.safetensors")
	out := filepath.Join(t.TempDir(), "o.png")
	args := []string{"--model", model, "--clip-tokenizer", clip, "--prompt", "a red cube", "--steps", "1",
		"--width", "64", "--height", "64", "-o", out}
	var stderr bytes.Buffer
	o, err := parseGenerateFlags(append(args, "--device", "cuda"), &stderr)
	if err != nil {
		t.Fatal(err)
	}
	err = generate(context.Background(), o, &stderr)
	if err == nil || !strings.Contains(err.Error(), "--device cuda") || !strings.Contains(err.Error(), "--device cpu") {
		t.Fatalf("--device cuda without a driver: %v, want an error naming --device cuda and --device cpu", err)
	}
	stderr.Reset()
	if o, err = parseGenerateFlags(append(args, "--device", "auto"), &stderr); err != nil {
		t.Fatal(err)
	}
	if err := generate(context.Background(), o, &stderr); err != nil {
		t.Fatalf("--device auto: %v\n%s", err, stderr.String())
	}
	if n := strings.Count(stderr.String(), "device auto:"); n != 1 || !strings.Contains(stderr.String(), " on cpu;") {
		t.Errorf("--device auto logged %d fallback lines, want 1 and a run on cpu:\n%s", n, stderr.String())
	}
}

func TestCommandsOnDevice(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	if testing.Short() {
		t.Skip("-short: runs generate and merge on the CUDA emulator")
	}
	goldenModels(t) // skip early without the golden models
	cudatest.RunChild(t, "TestCommandsOnDeviceChild", cudatest.Build(t))
}

func TestCommandsOnDeviceChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestCommandsOnDevice")
	}
	clip, models := goldenModels(t)
	model := filepath.Join(models, "sd15-tiny.safetensors")
	t.Run("generate", func(t *testing.T) {
		base := []string{"--model", model, "--clip-tokenizer", clip, "--prompt", "a red cube", "--cuda-dtype", "f32"}
		cpu, cpuParams := generatePNG(t, nil, append(base, "--device", "cpu")...)
		gpu, params := generatePNG(t, nil, append(base, "--device", "cuda")...)
		if cpuParams != params {
			t.Errorf("infotext on cuda %q, on cpu %q", params, cpuParams)
		}
		worst := 0
		for i := range cpu {
			worst = max(worst, int(math.Abs(float64(cpu[i])-float64(gpu[i]))))
		}
		if len(cpu) != len(gpu) || worst > 2 {
			t.Fatalf("--device cuda image differs from the CPU's by up to %d levels (of %d bytes)", worst, len(cpu))
		}
	})
	t.Run("generate logs the device", func(t *testing.T) {
		var stderr bytes.Buffer
		o, err := parseGenerateFlags([]string{"--model", model, "--clip-tokenizer", clip, "--prompt", "a red cube",
			"--steps", "1", "--width", "64", "--height", "64", "--device", "cuda", "-o", filepath.Join(t.TempDir(), "o.png")}, &stderr)
		if err != nil {
			t.Fatal(err)
		}
		if err := generate(context.Background(), o, &stderr); err != nil {
			t.Fatalf("%v\n%s", err, stderr.String())
		}
		if !strings.Contains(stderr.String(), " on cuda:0 ") || !strings.Contains(stderr.String(), " f16;") {
			t.Errorf("generate --device cuda did not say it ran on cuda:0 in f16:\n%s", stderr.String())
		}
	})
	t.Run("generate with plugins", func(t *testing.T) {
		hint := filepath.Join(t.TempDir(), "hint.png")
		img := image.NewNRGBA(image.Rect(0, 0, 64, 64))
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
		base := []string{"--model", model, "--clip-tokenizer", clip, "--prompt", "a red cube", "--negative", "blurry",
			"--cuda-dtype", "f32", "--lora", filepath.Join(models, "lora-kohya_diffusers.safetensors") + ":0.8",
			"--controlnet", filepath.Join(models, "controlnet-tiny.safetensors"), "--control-image", hint, "--control-strength", "0.9",
			"--ella", filepath.Join(models, "ella-tiny.safetensors"), "--t5", filepath.Join(models, "t5-tiny"), "--t5-tokenizer", t5tok}
		sup := testPlugins(t)
		cpu, _ := generatePNG(t, sup, append(base, "--device", "cpu")...)
		gpu, _ := generatePNG(t, testPlugins(t), append(base, "--device", "cuda")...) // fresh plugin processes: told the device at their first call
		worst := 0
		for i := range cpu {
			worst = max(worst, int(math.Abs(float64(cpu[i])-float64(gpu[i]))))
		}
		if len(cpu) != len(gpu) || worst > 2 {
			t.Fatalf("--device cuda image with LoRA + ControlNet + ELLA differs from the CPU's by up to %d levels", worst)
		}
	})
	t.Run("merge", func(t *testing.T) {
		dir := t.TempDir()
		lora := filepath.Join(models, "lora-kohya_ldm.safetensors")
		outs := map[string]string{}
		for _, dev := range []string{"cpu", "cuda"} {
			outs[dev] = filepath.Join(dir, dev+".safetensors")
			if err := runMerge([]string{"--model", model, "--lora", lora + ":0.8", "--dtype", "fp32", "--quiet",
				"--device", dev, "-o", outs[dev]}); err != nil {
				t.Fatalf("merge --device %s: %v", dev, err)
			}
		}
		cpu, err := safetensors.Open(outs["cpu"])
		if err != nil {
			t.Fatal(err)
		}
		defer cpu.Close()
		gpu, err := safetensors.Open(outs["cuda"])
		if err != nil {
			t.Fatal(err)
		}
		defer gpu.Close()
		for _, name := range cpu.Names() {
			a, err := cpu.Get(name)
			if err != nil {
				t.Fatal(err)
			}
			b, err := gpu.Get(name)
			if err != nil {
				t.Fatalf("%s missing from the cuda merge: %v", name, err)
			}
			av, aerr := a.Float32()
			bv, berr := b.Float32()
			if aerr != nil || berr != nil {
				continue // integer tensors
			}
			var num, den float64
			for i := range av {
				d := float64(av[i]) - float64(bv[i])
				num += d * d
				den += float64(av[i]) * float64(av[i])
			}
			if den > 0 && math.Sqrt(num/den) > 1e-5 {
				t.Errorf("%s: cuda merge differs from the cpu merge (rel L2 %.3g)", name, math.Sqrt(num/den))
			}
		}
	})
}
