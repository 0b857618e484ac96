// inpaint.go lets a txt2img adapter patch an inpainting checkpoint's first
// conv (spec §3, A1111 networks.py): input_blocks.0.0.weight has 9 input
// channels there ([320, 9, 3, 3]: latent, mask, masked latent), a delta
// made for 4 is zero-padded 4 -> 9, i.e. added to the first 4 channels only.
//
// Only additive algorithms qualify (LoRA/LoCon, LoHa, LoKr, full diff,
// without DoRA): for those, patching the 4-channel slice equals adding the
// zero-padded delta. Other shape mismatches stay errors (check.go).
package lora

import "slices"

// inpaintConvIn is the ldm name of the first U-Net conv.
const inpaintConvIn = "input_blocks.0.0"

// checkInpaintPad re-checks m against the 4-channel view of an inpainting
// conv_in; ok is false when that does not apply or does not fit either.
func (f *File) checkInpaintPad(m *Module, cm *CkptModule) (binding, bool) {
	w := cm.Weight
	if cm.Component != UNet || cm.Local != inpaintConvIn || len(w) != 4 || w[1] != 9 || m.DoRA {
		return binding{}, false
	}
	switch m.Algo {
	case AlgoLoRA, AlgoLoHa, AlgoLoKr, AlgoFull:
	default:
		return binding{}, false
	}
	view := *cm
	view.Weight = []int{w[0], 4, w[2], w[3]}
	view.Bias = nil
	b, err := f.check(m, &view)
	if err != nil || !b.weight {
		return binding{}, false
	}
	b.padIn = 4
	return b, true
}

// applyPadded runs o on the first padIn input channels of w (shape shape).
func (o *Op) applyPadded(shape []int, w []float32) error {
	out, in := shape[0], shape[1]
	k := len(w) / (out * in)
	view := slices.Clone(shape)
	view[1] = o.padIn
	sp := getScratch(out * o.padIn * k)
	defer putScratch(sp)
	sub := *sp // [out, padIn, kh, kw]
	for r := 0; r < out; r++ {
		copy(sub[r*o.padIn*k:(r+1)*o.padIn*k], w[r*in*k:r*in*k+o.padIn*k])
	}
	if err := o.apply(view, sub); err != nil {
		return err
	}
	for r := 0; r < out; r++ {
		copy(w[r*in*k:r*in*k+o.padIn*k], sub[r*o.padIn*k:(r+1)*o.padIn*k])
	}
	return nil
}
