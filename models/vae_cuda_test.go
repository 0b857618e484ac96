// vae_cuda_test.go: VAEDecoderCUDA and VAEEncoderCUDA against the CPU VAE
// on the tiny layout (run inside TestImageModelsCUDAChild,
// unet_cuda_test.go), with the parts the GPU path does its own way checked
// alone: the mid attention (nn's wide-head flash kernel) over long rows
// and the Downsample (asymmetric padding inside im2col) on odd sides.
package models

import (
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
