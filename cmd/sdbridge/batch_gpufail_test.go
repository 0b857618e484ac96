// batch_gpufail_test.go: a batch of two images with --device cuda in fp16
// (LoRA + ControlNet with a batch-1 hint + ELLA, stand-in libraries and
// the CUDA C emulator, in a child process) gives the CPU pipeline's two
// images within the fp16 tolerance (rel L2 <= 1e-2 over the pixels), for
// both seed conventions: comfy (one noise draw for the batch) and a1111
// (image i from seed+i, so image 1 equals a batch-1 run with seed+1).
package main

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
)

func TestGenerateBatchOnDevice(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	if testing.Short() {
		t.Skip("-short: runs batched generations with plugins on the CUDA emulator")
	}
	goldenModels(t)
	out := cudatest.RunChild(t, "TestGenerateBatchOnDeviceChild", cudatest.Build(t))
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "rel L2") {
			t.Log(strings.TrimSpace(line))
		}
	}
}

// generateBatch runs generate with args and returns each image's RGB bytes.
func generateBatch(t *testing.T, batch int, args ...string) [][]byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "o.png")
	var stderr bytes.Buffer
	o, err := parseGenerateFlags(append(args, "--steps", "2", "--width", "64", "--height", "64", "--sampler", "euler",
		"--batch", fmt.Sprint(batch), "-o", out), &stderr)
	if err != nil {
		t.Fatal(err)
	}
	o.plugins = testPlugins(t) // fresh processes: told the device at their first call
	if err := generate(context.Background(), o, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	var imgs [][]byte
	for _, path := range o.outputPaths() {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		var pix []byte
		r := img.Bounds()
		for y := r.Min.Y; y < r.Max.Y; y++ {
			for x := r.Min.X; x < r.Max.X; x++ {
				cr, cg, cb, _ := img.At(x, y).RGBA()
				pix = append(pix, byte(cr>>8), byte(cg>>8), byte(cb>>8))
			}
		}
		imgs = append(imgs, pix)
	}
	if len(imgs) != batch {
		t.Fatalf("%d images written, want %d", len(imgs), batch)
	}
	return imgs
}

// pixelRelL2 is ||a - b|| / ||b|| over the pixel values, and the largest
// difference in levels.
func pixelRelL2(a, b []byte) (rel float64, worst int) {
	var num, den float64
	for i := range b {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
		worst = max(worst, int(math.Abs(d)))
	}
	return math.Sqrt(num / den), worst
}

func TestGenerateBatchOnDeviceChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestGenerateBatchOnDevice")
	}
	clip, models := goldenModels(t)
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
	base := []string{"--model", filepath.Join(models, "sd15-tiny.safetensors"), "--clip-tokenizer", clip,
		"--prompt", "a red cube", "--negative", "blurry", "--cuda-dtype", "f16",
		"--lora", filepath.Join(models, "lora-kohya_diffusers.safetensors") + ":0.8",
		"--controlnet", filepath.Join(models, "controlnet-tiny.safetensors"), "--control-image", hint, "--control-strength", "0.9",
		"--ella", filepath.Join(models, "ella-tiny.safetensors"), "--t5", filepath.Join(models, "t5-tiny"), "--t5-tokenizer", t5tok}
	const tol = 1e-2 // fp16 activations against the fp32 CPU
	for _, noise := range []string{"comfy", "a1111"} {
		t.Run(noise, func(t *testing.T) {
			args := append(append([]string{}, base...), "--noise", noise, "--seed", "3")
			cpu := generateBatch(t, 2, append(args, "--device", "cpu")...)
			gpu := generateBatch(t, 2, append(args, "--device", "cuda")...)
			for i := range cpu {
				rel, worst := pixelRelL2(gpu[i], cpu[i])
				t.Logf("image %d: rel L2 %.2e, worst %d levels", i, rel, worst)
				if len(gpu[i]) != len(cpu[i]) || !(rel <= tol) {
					t.Errorf("image %d of the batch on cuda differs from the CPU's: rel L2 %.3g (tolerance %g), worst %d levels", i, rel, tol, worst)
				}
			}
			if rel, _ := pixelRelL2(gpu[1], gpu[0]); rel < 0.05 {
				t.Errorf("the two images of the batch on cuda are nearly the same (rel L2 %.3g): one seed for both?", rel)
			}
			if noise != "a1111" {
				return
			}
			// A1111: image i is seed+i's, as a batch-1 run with that seed.
			alone := generateBatch(t, 1, append(append([]string{}, base...), "--noise", noise, "--seed", "4", "--device", "cuda")...)
			rel, worst := pixelRelL2(gpu[1], alone[0])
			t.Logf("image 1 of the batch vs seed 4 alone: rel L2 %.2e, worst %d levels", rel, worst)
			if !(rel <= tol) {
				t.Errorf("image 1 of an a1111 batch with seed 3 is not seed 4's image: rel L2 %.3g, worst %d levels", rel, worst)
			}
		})
	}
}
