// main_test.go: cudacheck against the stand-in CUDA libraries of package
// cudatest (no GPU; the kernels' CUDA C runs on its CPU emulator): every
// case must pass. This checks the check itself (shapes, argument order,
// comparisons, poisoning) and nn's GPU ops. The timings run at tiny sizes
// (their numbers mean nothing here); the SD1.5 image models run only with
// SDBRIDGE_CUDA_SLOW_TESTS=1, and IPC is left out.
package main

import (
	"math/rand/v2"
	"os"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/nn"
)

func TestCudacheckOnStandIns(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	cudatest.RunChild(t, "TestCudacheckChild", cudatest.Build(t))
}

func TestCudacheckChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestCudacheckOnStandIns")
	}
	rng = rand.New(rand.NewPCG(1, 2))
	run(options{timings: true, sizes: smallSizes})
	if len(failures) != 0 {
		t.Fatalf("failed cases %q, want none", failures)
	}
	if passed < 20 {
		t.Fatalf("%d cases passed, want at least 20", passed)
	}
}

// TestImageModelsOnStandIns runs the image models' checks (the SD1.5
// U-Net at an 8x8 latent, a ControlNet at 8x8, the VAE at 4x4; random
// weights) through models' GPU forwards on the stand-ins, comparing each
// with its CPU model, in fp32 and fp16, and the U-Net through CUDA graphs
// (a replay matching the eager forward bit for bit). It takes about 6
// minutes on two loaded cores (341 s measured, 3.5 minutes of it the
// graph checks), so it runs only with SDBRIDGE_CUDA_SLOW_TESTS=1.
func TestImageModelsOnStandIns(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	if os.Getenv("SDBRIDGE_CUDA_SLOW_TESTS") == "" {
		t.Skip("slow (minutes): set SDBRIDGE_CUDA_SLOW_TESTS=1")
	}
	out := cudatest.RunChild(t, "TestImageModelsChild", cudatest.Build(t))
	if testing.Verbose() {
		t.Log(out)
	}
}

func TestImageModelsChild(t *testing.T) {
	if !cudatest.InChild() || os.Getenv("SDBRIDGE_CUDA_SLOW_TESTS") == "" {
		t.Skip("run by TestImageModelsOnStandIns")
	}
	rng = rand.New(rand.NewPCG(3, 4))
	g, err := nn.OpenGPU(0) // arena and cuBLASLt, as the pipeline
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	p0 := passed
	dts := []nn.GPUDType{nn.GPUF32, nn.GPUF16}
	checkAndTimeUNet(g, dts, 8, 0, true) // graphs too: the stand-in cuBLAS records GEMMs in captures
	checkAndTimeControlNet(g, dts, 8, 0)
	checkAndTimeVAE(g, dts, 4, 0)
	if len(failures) != 0 {
		t.Fatalf("image model checks failed: %q", failures)
	}
	if want := p0 + 2*(1+3+13+2); passed != want {
		t.Fatalf("%d checks passed, want %d (per dtype: U-Net, 3 U-Net graph, 13 ControlNet residuals, VAE decode and encode)", passed-p0, want-p0)
	}
}

func TestCompare(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want []float32
		tol       float64
		pass      bool
	}{
		{"equal", []float32{1, 2}, []float32{1, 2}, 0, true},
		{"close", []float32{1, 2.00001}, []float32{1, 2}, 1e-4, true},
		{"far", []float32{1, 3}, []float32{1, 2}, 1e-4, false},
		{"nan", []float32{1, float32NaN()}, []float32{1, 2}, 1, false},
		{"length", []float32{1}, []float32{1, 2}, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p0, f0 := passed, failed
			compare(tc.name, tc.got, tc.want, tc.tol)
			if gotPass := passed > p0; gotPass != tc.pass || passed+failed != p0+f0+1 {
				t.Fatalf("compare passed=%v, want %v", gotPass, tc.pass)
			}
		})
	}
}

func float32NaN() float32 {
	var z float32
	return z / z
}
