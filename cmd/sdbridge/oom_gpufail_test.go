// oom_gpufail_test.go: generate --device cuda when the GPU runs out of
// memory, on the stand-in driver with a memory limit (fakecuda.c's
// sdbFakeSetMemLimit): a limit too small for the weights and one too small
// only for a larger image's activations each fail with one message naming
// out of GPU memory, what was being allocated, the bytes asked for, free
// and total memory and what to try; the run leaves no device memory and no
// plugin process behind, and the next generation in the same process
// succeeds.
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ebitengine/purego"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
)

// fakeMem reaches the stand-in driver's memory limit and usage.
type fakeMem struct {
	setLimit func(n int64) uint64 // sdbFakeSetMemLimit: returns the bytes in use
	peak     func(reset int32) uint64
}

// openFakeMem binds the stand-in driver named by SDBRIDGE_CUDA_DRIVER (the
// library cuda.Open loaded in this child).
func openFakeMem(t *testing.T) *fakeMem {
	t.Helper()
	h, err := purego.Dlopen(os.Getenv("SDBRIDGE_CUDA_DRIVER"), purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		t.Fatalf("stand-in driver: %v", err)
	}
	var m fakeMem
	purego.RegisterLibFunc(&m.setLimit, h, "sdbFakeSetMemLimit")
	purego.RegisterLibFunc(&m.peak, h, "sdbFakeMemPeak")
	t.Cleanup(func() { m.setLimit(-1) })
	return &m
}

// childPIDs lists the processes whose parent is this one.
func childPIDs(t *testing.T) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	self := strconv.Itoa(os.Getpid())
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold blanks, so split after ')'.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == self && f[0] != "Z" {
			out = append(out, pid)
		}
	}
	return out
}

func TestGenerateOutOfGPUMemory(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	if testing.Short() {
		t.Skip("-short: runs generate on the CUDA emulator")
	}
	out := cudatest.RunChild(t, "TestGenerateOutOfGPUMemoryChild", cudatest.Build(t))
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "error: ") || strings.Contains(line, "peak device memory") {
			t.Log(strings.TrimSpace(line))
		}
	}
}

func TestGenerateOutOfGPUMemoryChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestGenerateOutOfGPUMemory")
	}
	files, err := writeDemoModels(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mem := openFakeMem(t)
	run := func(t *testing.T, size int, plugins bool, limit int64, extra ...string) (string, error) {
		t.Helper()
		args := []string{"--model", files.Checkpoint, "--clip-tokenizer", files.Dir, "--prompt", "a red fox",
			"--negative", "blurry", "--steps", "1", "--sampler", "euler", "--seed", "5", "--device", "cuda",
			"--width", fmt.Sprint(size), "--height", fmt.Sprint(size), "-o", filepath.Join(t.TempDir(), "o.png")}
		args = append(args, extra...)
		if plugins {
			args = append(args, "--lora", files.LoRA+":0.8", "--controlnet", files.ControlNet, "--control-image", files.Hint,
				"--ella", files.ELLA, "--t5", files.T5)
		}
		var stderr bytes.Buffer
		o, err := parseGenerateFlags(args, &stderr)
		if err != nil {
			t.Fatal(err)
		}
		if plugins {
			sup := testPlugins(t)
			o.plugins = sup
			defer func() {
				sup.Close()
				if kids := childPIDs(t); len(kids) > 0 {
					t.Errorf("plugin processes %v still running after the supervisor closed", kids)
				}
			}()
		}
		mem.setLimit(limit)
		mem.peak(1)
		err = generate(context.Background(), o, &stderr)
		if u := mem.setLimit(-1); u != 0 {
			t.Errorf("%d bytes of device memory still allocated after generate returned (err %v)", u, err)
		}
		return stderr.String(), err
	}

	// A clean run at 64x64 measures the peak the limits are cut from. The
	// 200 MiB limit keeps the arenas from taking their usual 256 MiB
	// blocks: they take just what they need, in 2 MiB blocks.
	if log, err := run(t, 64, false, 200<<20); err != nil {
		t.Fatalf("run under 200 MiB: %v\n%s", err, log)
	}
	peak64 := mem.peak(1)
	t.Logf("peak device memory at 64x64: %d bytes", peak64)

	for _, tc := range []struct {
		name    string
		size    int
		plugins bool
		limit   int64
		dtype   string
		want    []string
	}{
		{"weights", 64, false, 256 << 10, "f16", []string{"uploading the weights", "u-net", "tensor [", "already at --cuda-dtype f16"}},
		{"weights in f32", 64, false, 256 << 10, "f32", []string{"uploading the weights", "u-net", "tensor [", "try --cuda-dtype f16"}},
		{"activations", 128, false, int64(peak64), "f16", []string{"activations at latents [", "128x128 pixels"}},
		{"activations with plugins", 128, true, int64(peak64), "f16", []string{"128x128"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log, err := run(t, tc.size, tc.plugins, tc.limit, "--cuda-dtype", tc.dtype)
			if err == nil {
				t.Fatalf("generate under a %d-byte limit succeeded\n%s", tc.limit, log)
			}
			msg := err.Error()
			t.Logf("error: %s", msg)
			for _, w := range append(tc.want, "out of GPU memory", "bytes) requested", " free of ", "--device cpu") {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not name %q: %s", w, msg)
				}
			}
			if kids := childPIDs(t); len(kids) > 0 {
				t.Errorf("processes %v left running", kids)
			}
			// The same process generates again once the memory is there.
			if log, err := run(t, 64, false, int64(peak64)+64<<10); err != nil {
				t.Fatalf("generation after the failure: %v\n%s", err, log)
			}
		})
	}
}
