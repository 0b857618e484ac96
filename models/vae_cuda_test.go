// vae_cuda_test.go: VAEDecoderCUDA and VAEEncoderCUDA against the CPU VAE
// on the tiny layout (run inside TestImageModelsCUDAChild,
// unet_cuda_test.go), with the parts the GPU path does its own way checked
// alone: the mid attention (nn's wide-head flash kernel) over long rows
// and the Downsample (asymmetric padding inside im2col) on odd sides.
package models

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// tinyVAE binds the tiny layout's VAE (encoder and decoder) from random
// weights.
func tinyVAE(t *testing.T) *VAE {
	t.Helper()
	var specs []safetensors.Spec
	for _, s := range Tiny(1000).Specs(safetensors.F32) {
		if strings.HasPrefix(s.Name, "first_stage_model.") {
			specs = append(specs, s)
		}
	}
	v, err := LoadVAE(NewWeights(writeTiny(t, specs, 5)), 0)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func checkVAECUDA(t *testing.T, g *nn.GPU, m cudaMode) {
	v := tinyVAE(t)
	dec, err := NewVAEDecoderCUDA(g, v)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	enc, err := NewVAEEncoderCUDA(g, v)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	for _, tc := range []struct {
		name    string
		b, h, w int // latent size
		quick   bool
	}{
		{"latent 6x6", 1, 6, 6, false},
		{"latent 5x3 batch 2", 2, 5, 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if m.skip(t, tc.quick) {
				return
			}
			lat := ramp(tc.b, 4, tc.h, tc.w) // [B, 4, h, w]
			in := lat.Clone()
			want, err := v.Decode(lat)
			if err != nil {
				t.Fatal(err)
			}
			got, err := dec.Decode(lat)
			if err != nil {
				t.Fatal(err)
			}
			checkClose(t, "decoded image", got, want, m.tol)
			checkClose(t, "latent after Decode", lat, in, 0)

			img := scaled(ramp(tc.b, 3, 8*tc.h, 8*tc.w), 0.9) // [B, 3, 8h, 8w]
			wantLat, err := v.Encode(img)
			if err != nil {
				t.Fatal(err)
			}
			gotLat, err := enc.Encode(img)
			if err != nil {
				t.Fatal(err)
			}
			checkClose(t, "encoded latent", gotLat, wantLat, m.tol)
		})
	}
	t.Run("implicit-GEMM convs", func(t *testing.T) {
		// fp16 only (fp32 convs always use im2col): the whole decoder (and,
		// with SDBRIDGE_CUDA_SLOW_TESTS=1, the encoder) with conv_igemm_f16
		// instead of im2col + cuBLAS; the emulated MMAs make it slow, so the
		// quick run decodes a 2x2 latent only.
		if g.DType != nn.GPUF16 {
			t.Skip("fp32 convolutions always use im2col")
		}
		g.ConvAlgo = nn.ConvImplicitGEMM
		defer func() { g.ConvAlgo = nn.ConvIm2col }()
		lat := ramp(1, 4, 2, 2) // [1, 4, 2, 2]
		want, err := v.Decode(lat)
		if err != nil {
			t.Fatal(err)
		}
		got, err := dec.Decode(lat)
		if err != nil {
			t.Fatal(err)
		}
		checkClose(t, "decoded image (implicit GEMM)", got, want, m.tol)
		if !m.all {
			t.Log("encoder with the implicit GEMM: SDBRIDGE_CUDA_SLOW_TESTS=1")
			return
		}
		img := scaled(ramp(2, 3, 40, 24), 0.9) // [2, 3, 40, 24]
		wantLat, err := v.Encode(img)
		if err != nil {
			t.Fatal(err)
		}
		gotLat, err := enc.Encode(img)
		if err != nil {
			t.Fatal(err)
		}
		checkClose(t, "encoded latent (implicit GEMM)", gotLat, wantLat, m.tol)
	})
	t.Run("mid attention over 768 positions", func(t *testing.T) {
		// Long softmax rows (the SD VAE at 512 px has 4096 per row). x is
		// small so the output is mostly the attention's increment (the
		// GroupNorm in front makes the increment independent of x's scale).
		a := v.Decoder.Mid.Attn1
		x := scaled(ramp(2, a.Q.Weight.Shape[0], 32, 24), 0.01) // [2, C, 32, 24]
		want := a.Forward(x)
		r := dec.newRun()
		defer r.release()
		y := r.vaeAttn(a, r.upload(x)) // [2, C, 32, 24]
		if r.err != nil {
			t.Fatal(r.err)
		}
		got, err := y.Download()
		if err != nil {
			t.Fatal(err)
		}
		checkClose(t, "attention block", got, want, m.tol)
	})
	t.Run("512-wide attention block", func(t *testing.T) {
		// The SD VAE's mid attention (one head of 512 channels, so nn's
		// wide-head flash kernels), random weights, 10x7 positions.
		checkWideAttnCUDA(t, g, m, 512, 10, 7)
	})
	t.Run("downsample", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			h, w int
		}{{"8x8", 8, 8}, {"7x5", 7, 5}, {"1x2", 1, 2}} {
			t.Run(tc.name, func(t *testing.T) {
				d := &VAEDownsample{Conv: &nn.Conv2d{Weight: scaled(ramp(6, 3, 3, 3), 0.3), Bias: ramp(6), Stride: 2}}
				x := ramp(2, 3, tc.h, tc.w) // [2, 3, h, w]
				want := d.Forward(x)        // [2, 6, (h-2)/2+1, (w-2)/2+1]
				dw := newDeviceWeights(g)
				defer dw.Close()
				if err := uploadAll(dw, convWeights(d.Conv)); err != nil {
					t.Fatal(err)
				}
				r := newImageRun(dw)
				defer r.release()
				y := r.vaeDownsample(d, r.upload(x)) // [2, 6, (h-2)/2+1, (w-2)/2+1]
				if r.err != nil {
					t.Fatal(r.err)
				}
				got, err := y.Download()
				if err != nil {
					t.Fatal(err)
				}
				checkClose(t, "downsample", got, want, m.tol)
			})
		}
	})
	t.Run("errors", func(t *testing.T) {
		if m.skip(t, false) {
			return
		}
		for _, tc := range []struct {
			name string
			run  func() error
			want string
		}{
			{"latent channels", func() error { _, err := dec.Decode(nn.New(1, 3, 2, 2)); return err }, "latent has shape"},
			{"image size", func() error { _, err := enc.Encode(nn.New(1, 3, 12, 16)); return err }, "not a multiple of 8"},
			{"no encoder", func() error {
				_, err := NewVAEEncoderCUDA(g, &VAE{Config: v.Config, Decoder: v.Decoder})
				return err
			}, "without its encoder"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if err := tc.run(); err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %v, want it to say %q", err, tc.want)
				}
			})
		}
	})
}

// checkWideAttnCUDA runs a VAEAttnBlock of c channels with random
// weights on [2, c, h, w] through imageRun.vaeAttn and compares it with
// the CPU block.
func checkWideAttnCUDA(t *testing.T, g *nn.GPU, m cudaMode, c, h, w int) {
	t.Helper()
	r := rand.New(rand.NewPCG(uint64(c), 7))
	rnd := func(s float32, shape ...int) *nn.Tensor {
		x := nn.New(shape...)
		for i := range x.Data {
			x.Data[i] = float32(r.NormFloat64()) * s
		}
		return x
	}
	lin := func() *nn.Linear { return &nn.Linear{Weight: rnd(0.05, c, c), Bias: rnd(0.1, c)} }
	a := &VAEAttnBlock{Norm: &nn.GroupNorm{Groups: 32, Eps: 1e-6, Weight: rnd(0.5, c), Bias: rnd(0.1, c)},
		Q: lin(), K: lin(), V: lin(), ProjOut: lin()}
	x := rnd(0.01, 2, c, h, w) // [2, C, h, w]: small, so the output is mostly the attention's increment
	want := a.Forward(x)       // [2, C, h, w]
	dw := newDeviceWeights(g)
	defer dw.Close()
	if err := uploadAll(dw, vaeAttnWeights(a)); err != nil {
		t.Fatal(err)
	}
	run := newImageRun(dw)
	defer run.release()
	y := run.vaeAttn(a, run.upload(x)) // [2, C, h, w]
	if run.err != nil {
		t.Fatal(run.err)
	}
	got, err := y.Download()
	if err != nil {
		t.Fatal(err)
	}
	checkClose(t, "attention block", got, want, m.tol)
}
