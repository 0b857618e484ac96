// updown.go: ldm's Downsample and Upsample (openaimodel.py) with
// use_conv=True, the resolution changes between U-Net levels. Odd sides
// work as in ldm/ComfyUI: the downsampler gives ceil(H/2) and the U-Net
// decoder upsamples to the size of the skip it is concatenated with
// (ForwardTo; ComfyUI passes output_shape, diffusers upsample_size).
//
// 2-D only; the conv-less (pooling) variants are not used by SD 1.x.
package models

import "github.com/sdbridge/sdbridge/nn"

// Downsample is a 3x3 stride-2 conv, pad 1: H -> ceil(H/2).
type Downsample struct {
	Op *nn.Conv2d // op: [C, C, 3, 3]
}

func newDownsample(w *Weights, key string, c int) *Downsample {
	return &Downsample{Op: w.Conv2d(key+".op", c, c, 3, 2, 1)}
}

// Forward maps x [B, C, H, W] to [B, C, ceil(H/2), ceil(W/2)].
func (d *Downsample) Forward(x *nn.Tensor) *nn.Tensor { return d.Op.Forward(x) }

func (d *Downsample) apply(x, _, _ *nn.Tensor) *nn.Tensor { return d.Forward(x) }

// Upsample is nearest 2x upsampling followed by a 3x3 conv, pad 1.
type Upsample struct {
	Conv *nn.Conv2d // conv: [C, C, 3, 3]
}

func newUpsample(w *Weights, key string, c int) *Upsample {
	return &Upsample{Conv: w.Conv2d(key+".conv", c, c, 3, 1, 1)}
}

// Forward maps x [B, C, H, W] to [B, C, 2H, 2W].
func (u *Upsample) Forward(x *nn.Tensor) *nn.Tensor {
	h := nn.UpsampleNearest2x(x) // [B, C, 2H, 2W]: F.interpolate(x, scale_factor=2, mode="nearest")
	return u.Conv.Forward(h)     // [B, C, 2H, 2W]
}

// ForwardTo maps x [B, C, H, W] to [B, C, h, w]: nearest resize to the
// target size (the next skip's), then the conv.
func (u *Upsample) ForwardTo(x *nn.Tensor, h, w int) *nn.Tensor {
	// F.interpolate(x, size=output_shape[-2:], mode="nearest")
	up := nn.UpsampleNearest(x, h, w) // [B, C, h, w]
	return u.Conv.Forward(up)         // [B, C, h, w]
}

func (u *Upsample) apply(x, _, _ *nn.Tensor) *nn.Tensor { return u.Forward(x) }
