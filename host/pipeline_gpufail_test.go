// pipeline_gpufail_test.go: a loaded pipeline on the GPU (stand-in
// libraries with a device memory limit and the CUDA C emulator, in a child
// process) that runs out of device memory in the middle of a generation
// fails with one message naming the activations and the image size, keeps
// nothing of the failed run in its arena, and generates the clean run's
// image once the memory is there: the same Loaded, no reload.
package host

import (
	"context"
	"errors"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/ebitengine/purego"
	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
)

func TestPipelineOutOfGPUMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three small generations on the CUDA C emulator; not with -short")
	}
	if !cudatest.InChild() {
		logChildErrors(t, cudatest.RunChild(t, "TestPipelineOutOfGPUMemory", cudatest.Build(t)))
		return
	}
	h, err := purego.Dlopen(os.Getenv("SDBRIDGE_CUDA_DRIVER"), purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		t.Fatalf("stand-in driver: %v", err)
	}
	var setLimit func(n int64) uint64
	purego.RegisterLibFunc(&setLimit, h, "sdbFakeSetMemLimit")
	defer setLimit(-1)
	dev, err := OpenDevice(DeviceCUDA, DTypeF16, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	setLimit(200 << 20) // under the arenas' 256 MiB blocks: they grow by what they need
	pl, _ := tinyPipeline(t, dev)
	ctx := context.Background()
	req := Request{Prompt: "a house", Negative: "blurry", Steps: 2, CFG: 5, Sampler: "euler", Schedule: "normal",
		Width: 64, Height: 64, Seed: 1}
	arena := pl.GPU().Arena
	if arena == nil {
		t.Fatal("the pipeline's GPU has no arena")
	}
	inUse0 := arena.Stats().InUse
	want, err := pl.Generate(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if n := arena.Stats().InUse; n != inUse0 {
		t.Fatalf("a clean generation left %d bytes in use in the arena (before %d)", n, inUse0)
	}
	// A device of what is held now (the weights, the arenas' blocks in
	// use) plus 1 MiB: too little for a 128x128 image's scratch.
	if _, err := arena.Trim(); err != nil {
		t.Fatal(err)
	}
	held := setLimit(-1)
	setLimit(int64(held) + 1<<20)
	big := req
	big.Width, big.Height = 128, 128
	_, err = pl.Generate(ctx, big)
	var oom *cuda.OutOfMemoryError
	if err == nil || !errors.As(err, &oom) {
		t.Fatalf("128x128 with %d bytes of device memory: err %v, want an out-of-memory error", held+1<<20, err)
	}
	t.Logf("error: %.600s", err)
	for _, w := range []string{"out of GPU memory", "activations at latents [", "128x128 pixels", " free of ", "--device cpu"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not name %q: %v", w, err)
		}
	}
	if n := arena.Stats().InUse; n != inUse0 {
		t.Errorf("the failed generation left %d bytes in use in the arena (before %d)", n, inUse0)
	}
	setLimit(0)
	got, err := pl.Generate(ctx, req)
	if err != nil {
		t.Fatalf("the same pipeline after running out of memory: %v", err)
	}
	var num, den float64
	for i, w := range want.Image.Data {
		d := float64(got.Image.Data[i] - w)
		num += d * d
		den += float64(w) * float64(w)
	}
	if rel := math.Sqrt(num / den); !(rel <= 1e-6) {
		t.Fatalf("image after the out-of-memory failure differs from the clean run's: rel_l2 %g", rel)
	}
}
