// controlnet_cuda_test.go: ControlNetCUDA against the CPU ControlNet on the
// tiny layout (run inside TestImageModelsCUDAChild, unet_cuda_test.go):
// hint encoding, residuals with a per-row and a broadcast hint at even and
// odd latent sizes, and the device variant writing into given buffers.
package models

import (
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

func checkControlNetCUDA(t *testing.T, g *nn.GPU, m cudaMode) {
	c, _, err := LoadControlNet(tinyControlNetFile(t, safetensors.F32))
	if err != nil {
		t.Fatal(err)
	}
	n, err := NewControlNetCUDA(g, c)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	for _, tc := range []struct {
		name      string
		b, h, w   int
		hintBatch int
		quick     bool
	}{
		{"9x12 hint per row", 2, 9, 12, 2, false},
		{"10x6 broadcast hint", 2, 10, 6, 1, true},
	} {
		// Sizes keep the deepest level at >= 2 pixels (see unet_cuda_test.go);
		// 9x12 has 2x2 there, which F16 needs for its 1e-2.
		t.Run(tc.name, func(t *testing.T) {
			if m.skip(t, tc.quick) {
				return
			}
			x := ramp(tc.b, 4, tc.h, tc.w)                             // [B, 4, h, w]
			ctx := scaled(ramp(tc.b, 77, 128), 0.5)                    // [B, 77, 128]
			hint := scaled(ramp(tc.hintBatch, 3, 8*tc.h, 8*tc.w), 0.5) // [B or 1, 3, 8h, 8w]
			for i := range hint.Data {
				hint.Data[i] += 0.5 // RGB in [0, 1]
			}
			ts := []float32{999, 500, 1}[:tc.b]
			wantHint, err := c.HintEncode(hint)
			if err != nil {
				t.Fatal(err)
			}
			gotHint, err := n.HintEncode(hint)
			if err != nil {
				t.Fatal(err)
			}
			checkClose(t, "encoded hint", gotHint, wantHint, m.tol)

			want, err := c.ForwardEncoded(x, wantHint, ts, ctx)
			if err != nil {
				t.Fatal(err)
			}
			got, err := n.Forward(x, hint, ts, ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("%d residuals, want %d", len(got), len(want))
			}
			for _, name := range ResidualNames(c.Config) {
				checkClose(t, name, got[name], want[name], m.tol)
			}

			// Device variant: two residuals go into caller buffers.
			dx, dctx, dhint := upload(t, g, x), upload(t, g, ctx), upload(t, g, hint)
			guided, err := n.HintEncodeGPU(dhint)
			if err != nil {
				t.Fatal(err)
			}
			defer guided.Free()
			shapes := ResidualShapes(c.Config, tc.b, tc.h, tc.w)
			dst := GPUResiduals{}
			for _, name := range []string{InputBlockResidual(4), MiddleBlockResidual} {
				d, err := g.Empty(shapes[name]...)
				if err != nil {
					t.Fatal(err)
				}
				defer d.Free()
				dst[name] = d
			}
			res, err := n.ForwardEncodedGPU(dx, guided, ts, dctx, dst)
			if err != nil {
				t.Fatal(err)
			}
			for name, d := range res {
				if _, mine := dst[name]; mine {
					if d != dst[name] {
						t.Errorf("residual %s not written into the given buffer", name)
					}
				} else {
					defer d.Free()
				}
				r, err := d.Download()
				if err != nil {
					t.Fatal(err)
				}
				checkClose(t, name+" (ForwardEncodedGPU)", r, want[name], m.tol)
			}
		})
	}
	t.Run("errors", func(t *testing.T) {
		if m.skip(t, false) {
			return
		}
		x, ctx := ramp(1, 4, 8, 8), ramp(1, 77, 128)
		for _, tc := range []struct {
			name string
			run  func() error
			want string
		}{
			{"hint not 8x", func() error { _, err := n.Forward(x, ramp(1, 3, 60, 64), []float32{1}, ctx); return err }, "want a multiple of 8"},
			{"hint size", func() error { _, err := n.Forward(x, ramp(1, 3, 56, 64), []float32{1}, ctx); return err }, "exactly 8x the latent"},
			{"destination shape", func() error {
				d, err := g.Empty(1, 32, 4, 4)
				if err != nil {
					return err
				}
				defer d.Free()
				guided := upload(t, g, ramp(1, 32, 8, 8))
				_, err = n.ForwardEncodedGPU(upload(t, g, x), guided, []float32{1}, upload(t, g, ctx), GPUResiduals{InputBlockResidual(0): d})
				return err
			}, "destination residual has shape [1 32 4 4]"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if err := tc.run(); err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %v, want it to say %q", err, tc.want)
				}
			})
		}
	})
}
