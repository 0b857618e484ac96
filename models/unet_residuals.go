// unet_residuals.go: ControlNet-style residuals, keyed by the U-Net block
// they are added to. Names, never positions: "input_blocks.i" is added to the
// skip saved after U-Net input block i, "middle_block" to the middle block's
// output (cldm ControlledUnetModel semantics).
//
// It only names and combines residuals; the U-Net adds them (unet.go) and the
// ControlNet produces them (controlnet.go).
package models

import (
	"fmt"
	"slices"

	"github.com/sdbridge/sdbridge/nn"
)

// MiddleBlockResidual names the residual added to the middle block output.
const MiddleBlockResidual = "middle_block"

// InputBlockResidual names the residual added to the skip of input block i.
func InputBlockResidual(i int) string { return fmt.Sprintf("input_blocks.%d", i) }

// Residuals maps residual names to tensors [B, C, H, W] shaped like the
// U-Net activation they are added to. A missing name means "add nothing".
type Residuals map[string]*nn.Tensor

// ResidualNames lists the names a U-Net of cfg accepts: input_blocks.0 ..
// input_blocks.N-1, then middle_block (13 for SD 1.x).
func ResidualNames(cfg UNetConfig) []string {
	names := make([]string, 0, cfg.NumInputBlocks()+1)
	for i := range cfg.NumInputBlocks() {
		names = append(names, InputBlockResidual(i))
	}
	return append(names, MiddleBlockResidual)
}

// ResidualShapes returns the shape of every residual for a batch of b
// latents of h x w (the host sizes its residual buffers with it): input
// block i's output, then the middle block's. SD 1.5 at 64x64: 320 ch at
// 64, 32 and 16 px ... 1280 ch at 8 px.
func ResidualShapes(cfg UNetConfig, b, h, w int) map[string][]int {
	out := map[string][]int{InputBlockResidual(0): {b, cfg.ModelChannels, h, w}}
	i, ch := 1, cfg.ModelChannels
	for l, mult := range cfg.ChannelMult {
		ch = cfg.ModelChannels * mult
		for range cfg.NumResBlocks {
			out[InputBlockResidual(i)] = []int{b, ch, h, w}
			i++
		}
		if l != cfg.Levels()-1 {
			h, w = (h+1)/2, (w+1)/2 // 3x3 stride-2 conv, pad 1: ceil
			out[InputBlockResidual(i)] = []int{b, ch, h, w}
			i++
		}
	}
	out[MiddleBlockResidual] = []int{b, ch, h, w}
	return out
}

// Scale multiplies every residual by s in place (ControlNet strength).
func (r Residuals) Scale(s float32) {
	for _, t := range r {
		nn.Scale(t, s)
	}
}

// AddScaled adds s*o into r, name by name (summing several ControlNets); a
// name absent from r takes a scaled copy. Shapes must agree.
func (r Residuals) AddScaled(o Residuals, s float32) error {
	for name, t := range o {
		dst, ok := r[name]
		if !ok {
			c := t.Clone()
			nn.Scale(c, s)
			r[name] = c
			continue
		}
		if !slices.Equal(dst.Shape, t.Shape) {
			return fmt.Errorf("residual %q: shape %v, cannot add %v", name, dst.Shape, t.Shape)
		}
		c := t.Clone() // [B, C, H, W]
		nn.Scale(c, s)
		nn.AddInPlace(dst, c)
	}
	return nil
}

// checkNames refuses names the U-Net of cfg would not consume (a typo or a
// residual meant for another architecture must not be dropped silently).
func (r Residuals) checkNames(cfg UNetConfig) error {
	valid := ResidualNames(cfg)
	for name := range r {
		if !slices.Contains(valid, name) {
			return fmt.Errorf("unknown residual %q (want input_blocks.0..%d or middle_block)", name, cfg.NumInputBlocks()-1)
		}
	}
	return nil
}

// add returns base + r[name] (a new tensor), or base when r has no such
// residual. A shape mismatch is an error: the hint or the latent was sized
// wrongly.
func (r Residuals) add(name string, base *nn.Tensor) (*nn.Tensor, error) {
	t, ok := r[name]
	if !ok || t == nil {
		return base, nil
	}
	if !slices.Equal(t.Shape, base.Shape) {
		return nil, fmt.Errorf("residual %q has shape %v, the U-Net activation is %v", name, t.Shape, base.Shape)
	}
	return nn.Add(base, t), nil // [B, C, H, W]
}
