// cuda_test.go: the GPU path of nn on a machine without one: opening a GPU
// returns the clear no-driver error instead of panicking, and the 1-D
// launch grid covers every element. The numeric checks of the GPU ops
// against the CPU ones run on a GPU machine through cuda/cmd/cudacheck.
package nn

import (
	"errors"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
)

func TestOpenGPUWithoutDriver(t *testing.T) {
	if cuda.Available() == nil {
		t.Skip("a CUDA device is present; cudacheck covers the GPU path")
	}
	g, err := OpenGPU(0)
	if err == nil {
		g.Close()
		t.Fatal("OpenGPU succeeded without a usable driver")
	}
	if !errors.Is(err, cuda.ErrNoDriver) && !strings.Contains(err.Error(), "--device cpu") {
		t.Errorf("OpenGPU error %q neither wraps ErrNoDriver nor says to use --device cpu", err)
	}
}

func TestGridFor(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		want uint32
	}{
		{"one", 1, 1},
		{"exact", 512, 2},
		{"partial", 513, 3},
		{"capped", 1 << 30, 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := gridFor(tc.n).X; got != tc.want {
				t.Fatalf("gridFor(%d) = %d blocks, want %d", tc.n, got, tc.want)
			}
		})
	}
}
