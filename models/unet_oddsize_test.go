// unet_oddsize_test.go checks latents whose sides are not multiples of the
// U-Net's downscale factor (images in multiples of 8 px, not 64): the tiny
// U-Net runs at 9x13 with every upsampler resizing to its skip, its
// activations have the sizes ResidualShapes predicts (ControlNet residuals
// fit), and at 8x16 the result equals the plain-2x decoder bit for bit.
package models

import (
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// forwardPlain2x is the decoder as it was before odd sizes: every
// upsampler doubles, whatever the skip size. Used as the oracle where the
// sides are multiples of the downscale factor.
func forwardPlain2x(u *UNet, x *nn.Tensor, ts []float32, ctx *nn.Tensor) *nn.Tensor {
	emb := u.TimeEmbed.Forward(ts) // [B, 4mc]
	h := x                         // [B, in, H, W]
	var skips []*nn.Tensor
	for _, blk := range u.InputBlocks {
		h = blk.Forward(h, emb, ctx) // [B, C_i, H_i, W_i]
		skips = append(skips, h)
	}
	h = u.MiddleBlock.Forward(h, emb, ctx) // [B, C_mid, H/8, W/8]
	for k, blk := range u.OutputBlocks {
		h = nn.Concat(1, h, skips[len(skips)-1-k]) // [B, C + C_i, H_i, W_i]
		h = blk.Forward(h, emb, ctx)               // [B, C_k, H_k, W_k]
	}
	h = u.OutNorm.Forward(h) // [B, mc, H, W]
	nn.SiLU(h)
	return u.OutConv.Forward(h) // [B, out, H, W]
}

func TestUNetOddLatentSizes(t *testing.T) {
	u := tinyUNet(t)
	ts := []float32{999, 10.5}
	ctx := ramp(2, 77, 128) // [2, 77, 128]
	tests := []struct {
		name string
		h, w int
	}{
		{"8x16 (multiple of 8)", 8, 16},
		{"9x13", 9, 13},
		{"1x1", 1, 1},
		{"5x8", 5, 8},
		{"12x8 (multiple of 4 only)", 12, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := ramp(2, 4, tt.h, tt.w) // [2, 4, h, w]
			got, err := u.Forward(x, ts, ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]int{2, 4, tt.h, tt.w}, got.Shape); diff != "" {
				t.Fatalf("eps shape (-want +got):\n%s", diff)
			}
			for i, v := range got.Data {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					t.Fatalf("eps[%d] = %v", i, v)
				}
			}
			d := u.Config.Downscale()
			if tt.h%d == 0 && tt.w%d == 0 {
				want := forwardPlain2x(u, x, ts, ctx)
				if diff := cmp.Diff(want.Data, got.Data); diff != "" {
					t.Errorf("differs from the plain-2x decoder (-want +got):\n%s", diff)
				}
			}
			// Residuals sized by ResidualShapes fit the activations at this size.
			res := Residuals{}
			for name, s := range ResidualShapes(u.Config, 2, tt.h, tt.w) {
				res[name] = ramp(s...)
			}
			withRes, err := u.Forward(x, ts, ctx, res)
			if err != nil {
				t.Fatalf("residuals sized by ResidualShapes: %v", err)
			}
			if relDiff(withRes, got) == 0 {
				t.Error("residuals did not reach the output")
			}
		})
	}
}

// TestUNetOddUpsamplerTargets checks the decoder's upsamplers resize to
// the skip sizes (5x7 -> 3x4 -> 2x2 for 9x13) rather than doubling.
func TestUNetOddUpsamplerTargets(t *testing.T) {
	u := tinyUNet(t)
	x, ts, ctx := ramp(1, 4, 9, 13), []float32{500}, ramp(1, 77, 128)
	emb := u.TimeEmbed.Forward(ts) // [1, 4mc]
	h := x
	var sizes [][2]int
	for _, blk := range u.InputBlocks {
		h = blk.Forward(h, emb, ctx) // [1, C_i, H_i, W_i]
		sizes = append(sizes, [2]int{h.Shape[2], h.Shape[3]})
	}
	want := [][2]int{{9, 13}, {9, 13}, {9, 13}, {5, 7}, {5, 7}, {5, 7}, {3, 4}, {3, 4}, {3, 4}, {2, 2}, {2, 2}, {2, 2}}
	if diff := cmp.Diff(want, sizes); diff != "" {
		t.Errorf("encoder sizes (-want +got):\n%s", diff)
	}
	for _, k := range []struct{ block, layer, inH, inW, outH, outW int }{
		{2, 1, 2, 2, 3, 4}, {5, 2, 3, 4, 5, 7}, {8, 2, 5, 7, 9, 13},
	} {
		up := u.OutputBlocks[k.block].Layers[k.layer].(*Upsample)
		c := up.Conv.Weight.Shape[1]
		y := up.ForwardTo(ramp(1, c, k.inH, k.inW), k.outH, k.outW) // [1, C, outH, outW]
		if diff := cmp.Diff([]int{1, c, k.outH, k.outW}, y.Shape); diff != "" {
			t.Errorf("output_blocks.%d upsampler (-want +got):\n%s", k.block, diff)
		}
	}
}

// TestControlNetOddLatent runs a tiny ControlNet at a 9x13 latent (a 72x104
// hint) and feeds its residuals to the U-Net.
func TestControlNetOddLatent(t *testing.T) {
	f := writeTiny(t, controlNetSpecs(Tiny(1000), safetensors.F32, ""), 7)
	c, _, err := LoadControlNet(f)
	if err != nil {
		t.Fatal(err)
	}
	u := tinyUNet(t)
	x, ts, ctx, hint := ramp(1, 4, 9, 13), []float32{999}, ramp(1, 77, 128), ramp(1, 3, 72, 104)
	res, err := c.Forward(x, hint, ts, ctx)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range ResidualShapes(c.Config, 1, 9, 13) {
		if diff := cmp.Diff(s, res[name].Shape); diff != "" {
			t.Errorf("residual %s (-want +got):\n%s", name, diff)
		}
	}
	if _, err := u.Forward(x, ts, ctx, res); err != nil {
		t.Fatal(err)
	}
}
