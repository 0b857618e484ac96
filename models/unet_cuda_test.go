// unet_cuda_test.go: the image models' GPU forwards (U-Net here; ControlNet
// and VAE in their own _cuda_test files) against the CPU models on the tiny
// SD1.5 layout, run on the stand-in CUDA libraries in one child process
// (the driver loads once per process; one build of the stand-ins serves
// every image model). F32 storage must match to rel L2 1e-5, F16 storage
// (fp32 arithmetic) to 1e-2; F16 runs one case per model unless
// SDBRIDGE_CUDA_SLOW_TESTS=1. Sizes keep the deepest level at 2 pixels or
// more wherever it is compared directly (ControlNet residuals) or in F16:
// at 1x1 the tiny models' GroupNorms see 2 values per group and amplify
// any rounding (a 1e-7 change of the input moves the CPU's own
// middle_block residual by ~1e-4). The U-Net's output is less sensitive
// (8x8, deepest level 1x1, is checked in F32).
package models

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/nn"
)

// cudaMode is how a check runs in one storage dtype.
type cudaMode struct {
	tol   float64 // rel L2 of a model's output against the CPU model's
	store float64 // rel L2 of a tensor uploaded and downloaded (F16 rounds)
	all   bool    // run every case; else only the cases marked quick
}

// skip reports whether a case runs in m (and says so when it does not).
func (m cudaMode) skip(t *testing.T, quick bool) bool {
	if m.all || quick {
		return false
	}
	t.Skip("F16 runs the quick cases only; SDBRIDGE_CUDA_SLOW_TESTS=1 runs all")
	return true
}

// The rel L2 bounds of a GPU forward against the CPU one: F32 storage, and
// F16 storage with fp32 arithmetic.
const (
	cudaF32Tol = 1e-5
	cudaF16Tol = 1e-2
)

func TestImageModelsCUDA(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	out := cudatest.RunChild(t, "TestImageModelsCUDAChild", cudatest.Build(t))
	if testing.Verbose() {
		t.Log(out)
	}
}

func TestImageModelsCUDAChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestImageModelsCUDA")
	}
	g, err := nn.OpenGPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	g.Poison = true // an element no kernel wrote reads NaN and fails the check
	slow := os.Getenv("SDBRIDGE_CUDA_SLOW_TESTS") != ""
	for _, tc := range []struct {
		dtype nn.GPUDType
		m     cudaMode
	}{
		{nn.GPUF32, cudaMode{tol: cudaF32Tol, store: 0, all: true}},
		{nn.GPUF16, cudaMode{tol: cudaF16Tol, store: 5e-4, all: slow}},
	} {
		t.Run(tc.dtype.String(), func(t *testing.T) {
			g.DType = tc.dtype
			t.Run("unet", func(t *testing.T) { checkUNetCUDA(t, g, tc.m) })
			t.Run("unet graphs", func(t *testing.T) { checkUNetCUDAGraphs(t, g, tc.m) })
			t.Run("controlnet", func(t *testing.T) { checkControlNetCUDA(t, g, tc.m) })
			t.Run("vae", func(t *testing.T) { checkVAECUDA(t, g, tc.m) })
		})
	}
}

// checkUNetCUDA compares UNetCUDA.Forward and ForwardGPU with UNet.Forward.
func checkUNetCUDA(t *testing.T, g *nn.GPU, m cudaMode) {
	u := tinyUNet(t)
	c, err := NewUNetCUDA(g, u)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Run("fused attention weights", func(t *testing.T) {
		// Every attention's projections are fused, and each single weight
		// is a view at its rows of the fused tensor.
		attns := 0
		for _, b := range append(append(slices.Clone(u.InputBlocks), u.MiddleBlock), u.OutputBlocks...) {
			for _, l := range b.Layers {
				st, ok := l.(*SpatialTransformer)
				if !ok {
					continue
				}
				for _, tb := range st.Blocks {
					attns += 2
					fused := c.fa.of(tb.Attn1)
					k := c.DeviceWeight(tb.Attn1.ToK.Weight)
					if fused == nil || k == nil || k.Buf.Ptr != fused.Buf.Ptr+uint64(tb.Attn1.ToQ.Weight.Numel()*fused.DType.Size()) {
						t.Fatalf("%s attn1: to_k is not the second block of rows of the fused q/k/v weight", b.Name)
					}
				}
			}
		}
		if len(c.fa.w) != attns || attns == 0 {
			t.Fatalf("%d fused attention weights, want %d", len(c.fa.w), attns)
		}
	})
	for _, tc := range []struct {
		name     string
		b, h, w  int
		ctxLen   int
		residual bool
		onDevice bool // also run ForwardGPU on device tensors
		quick    bool
	}{
		{"8x8 ctx 77", 2, 8, 8, 77, false, false, false},
		{"10x6 ctx 64 with residuals", 2, 10, 6, 64, true, true, true},
		{"9x5 batch 1 with residuals", 1, 9, 5, 77, true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if m.skip(t, tc.quick) {
				return
			}
			x := ramp(tc.b, 4, tc.h, tc.w)                 // [B, 4, h, w]
			ctx := scaled(ramp(tc.b, tc.ctxLen, 128), 0.7) // [B, L, 128]
			ts := []float32{999, 10.5}[:tc.b]
			var res Residuals
			if tc.residual {
				res = Residuals{}
				for i, name := range ResidualNames(u.Config) {
					if i%3 == 1 {
						continue // some names absent: they add nothing
					}
					res[name] = scaled(ramp(ResidualShapes(u.Config, tc.b, tc.h, tc.w)[name]...), 0.1*float32(i+1))
				}
			}
			want, err := u.Forward(x, ts, ctx, res)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.Forward(x, ts, ctx, res)
			if err != nil {
				t.Fatal(err)
			}
			checkClose(t, "eps", got, want, m.tol)
			if !tc.onDevice {
				return
			}
			dx, dctx := upload(t, g, x), upload(t, g, ctx)
			dres := GPUResiduals{}
			for name, r := range res {
				dres[name] = upload(t, g, r)
			}
			y, err := c.ForwardGPU(dx, ts, dctx, dres)
			if err != nil {
				t.Fatal(err)
			}
			defer y.Free()
			gy, err := y.Download()
			if err != nil {
				t.Fatal(err)
			}
			checkClose(t, "eps (ForwardGPU)", gy, want, m.tol)
			for name, r := range dres { // inputs are not modified
				back, err := r.Download()
				if err != nil {
					t.Fatal(err)
				}
				checkClose(t, "residual "+name+" after ForwardGPU", back, res[name], m.store)
			}
			back, err := dx.Download()
			if err != nil {
				t.Fatal(err)
			}
			checkClose(t, "x after ForwardGPU", back, x, m.store)
		})
	}
	t.Run("errors", func(t *testing.T) {
		if m.skip(t, false) {
			return
		}
		x, ctx := ramp(1, 4, 8, 8), ramp(1, 77, 128)
		for _, tc := range []struct {
			name string
			res  Residuals
			want string
		}{
			{"unknown name", Residuals{"output_blocks.3": ramp(1, 32, 8, 8)}, `unknown residual "output_blocks.3"`},
			{"wrong shape", Residuals{"input_blocks.1": ramp(1, 32, 4, 4)}, `residual "input_blocks.1" has shape [1 32 4 4]`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := c.Forward(x, []float32{1}, ctx, tc.res)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %v, want it to say %q", err, tc.want)
				}
			})
		}
	})
}

// checkClose fails t unless got has want's shape, no NaN/Inf, and
// ||got-want|| / ||want|| <= tol.
func checkClose(t *testing.T, what string, got, want *nn.Tensor, tol float64) {
	t.Helper()
	if !slices.Equal(got.Shape, want.Shape) {
		t.Fatalf("%s: shape %v, want %v", what, got.Shape, want.Shape)
	}
	var num, den float64
	for i, w := range want.Data {
		g := float64(got.Data[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			t.Fatalf("%s: element %d is %v (want %v)", what, i, g, w)
		}
		d := g - float64(w)
		num += d * d
		den += float64(w) * float64(w)
	}
	rel := math.Sqrt(num / max(den, 1e-300))
	if !(rel <= tol) {
		t.Fatalf("%s: rel L2 %.3g > %.0e", what, rel, tol)
	}
	t.Logf("%s %v: rel L2 %.3g (tol %.0e)", what, got.Shape, rel, tol)
}

func scaled(x *nn.Tensor, s float32) *nn.Tensor {
	nn.Scale(x, s)
	return x
}

func upload(t *testing.T, g *nn.GPU, x *nn.Tensor) *nn.GPUTensor {
	t.Helper()
	d, err := g.Upload(x)
	if err != nil {
		t.Fatal(fmt.Errorf("upload %v: %w", x.Shape, err))
	}
	t.Cleanup(func() { d.Free() })
	return d
}
