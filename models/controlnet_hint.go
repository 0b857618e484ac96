// controlnet_hint.go: the ControlNet hint encoder (cldm.py input_hint_block):
// eight 3x3 convs with SiLU between them, taking the hint image at 8x the
// latent size down to model_channels at latent size.
//
// It depends on the hint only (not on t or the context), so a caller encodes
// each hint image once and reuses the result at every step
// (ControlNet.HintEncode / ForwardEncoded). No resizing or preprocessing here.
package models

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// hintConvs is the number of convs in input_hint_block (indices 0, 2, ..., 14;
// the odd indices are SiLU).
const hintConvs = 8

// hintStride is the stride of conv k: convs 2, 4 and 6 (keys 4, 8, 12)
// halve the resolution, three times in all, so the hint is 8x the latent.
func hintStride(k int) int {
	if k == 2 || k == 4 || k == 6 {
		return 2
	}
	return 1
}

// HintBlock is input_hint_block. SD 1.5 widths: 3->16->16->32->32->96->96->256->320.
type HintBlock struct {
	Convs []*nn.Conv2d // input_hint_block.{2k}, k = 0..7; 3x3, pad 1
}

// newHintBlock binds input_hint_block, reading the widths from the stored
// shapes (hint channels are 3 for every known net but are not assumed); the
// last conv must output mc channels.
func newHintBlock(w *Weights, mc int) *HintBlock {
	hb := &HintBlock{}
	in := -1
	for k := range hintConvs {
		key := fmt.Sprintf("input_hint_block.%d", 2*k)
		s, err := needShape(w, key+".weight", 4) // [out, in, 3, 3]
		if err != nil {
			w.Fail(err)
			return hb
		}
		if in < 0 {
			in = s[1]
		}
		out := s[0]
		if k == hintConvs-1 {
			out = mc
		}
		hb.Convs = append(hb.Convs, w.Conv2d(key, in, out, 3, hintStride(k), 1))
		in = out
	}
	if w.Has(fmt.Sprintf("input_hint_block.%d.weight", 2*hintConvs)) {
		w.Fail(fmt.Errorf("unexpected tensor %q: input_hint_block has %d convs", w.Prefix()+fmt.Sprintf("input_hint_block.%d.weight", 2*hintConvs), hintConvs))
	}
	return hb
}

// HintChannels is the channel count the hint image must have (3: RGB).
func (hb *HintBlock) HintChannels() int { return hb.Convs[0].Weight.Shape[1] }

// Forward maps hint [B, 3, 8h, 8w] to [B, mc, h, w].
func (hb *HintBlock) Forward(hint *nn.Tensor) *nn.Tensor {
	g := hint // [B, 3, 8h, 8w]
	for k, c := range hb.Convs {
		g = c.Forward(g) // [B, C_k, 8h/s_k, 8w/s_k]
		if k < len(hb.Convs)-1 {
			nn.SiLU(g)
		}
	}
	return g // [B, mc, h, w]
}
