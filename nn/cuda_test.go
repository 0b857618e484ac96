// cuda_test.go: the GPU path of nn on a machine without one: opening a GPU
// returns the clear no-driver error instead of panicking, the 1-D launch
// grid covers every element, and the dtype bookkeeping (element sizes,
// kernel names, fp16 rounding on upload) is right. The numeric checks of
// the GPU ops against the CPU ones are in cuda_ops_test.go (stand-ins +
// emulator here, cuda/cmd/cudacheck on a GPU).
package nn

import (
	"errors"
	"math"
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

func TestGroupNormThreads(t *testing.T) {
	for _, tc := range []struct{ n, want int }{{1, 32}, {105, 32}, {8 * 33, 64}, {40960, 1024}, {1 << 20, 1024}} {
		if got := groupNormThreads(tc.n); got != tc.want {
			t.Errorf("groupNormThreads(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

func TestGPUDType(t *testing.T) {
	for _, tc := range []struct {
		dt     GPUDType
		size   int
		kernel string
		blas   cuda.DataType
	}{{GPUF32, 4, "silu_f32", cuda.R32F}, {GPUF16, 2, "silu_f16", cuda.R16F}} {
		if tc.dt.Size() != tc.size || tc.dt.kernel("silu") != tc.kernel || tc.dt.blas() != tc.blas {
			t.Errorf("%s: size %d, kernel %q, blas %d; want %d, %q, %d", tc.dt, tc.dt.Size(), tc.dt.kernel("silu"), tc.dt.blas(), tc.size, tc.kernel, tc.blas)
		}
	}
	var zero GPU
	if zero.DType != GPUF32 {
		t.Error("the zero GPU does not store fp32")
	}
}

func TestHalvesRoundTrip(t *testing.T) {
	// Ties go to the even pattern: 1 + 2^-11 to 1, 1 + 3*2^-11 to 1 + 2^-9.
	in := []float32{1, 1.0009765625, 1.00048828125, 1.00146484375, -2.5e-8, 3e-8, 65519, 65520, float32(math.Inf(-1))}
	want := []float32{1, 1.0009765625, 1, 1.001953125, float32(math.Copysign(0, -1)), 5.9604645e-08, 65504, float32(math.Inf(1)), float32(math.Inf(-1))}
	got := make([]float32, len(in))
	fromHalves(got, toHalves(in))
	for i := range in {
		if got[i] != want[i] || math.Signbit(float64(got[i])) != math.Signbit(float64(want[i])) {
			t.Errorf("half(%g) = %g, want %g", in[i], got[i], want[i])
		}
	}
}
