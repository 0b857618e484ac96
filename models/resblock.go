// resblock.go: ldm's ResBlock (openaimodel.py), the convolutional block of
// the U-Net and ControlNet, with the time embedding added per channel.
//
// SD 1.x settings only: use_scale_shift_norm=False (the embedding is added,
// not used as scale/shift), no up/down sampling inside the block, a 1x1 conv
// skip when channels change. Dropout layers are inference no-ops and absent.
package models

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// ResBlock is ldm ResBlock(channels=in, emb_channels, out_channels=out).
type ResBlock struct {
	InNorm  *nn.GroupNorm // in_layers.0: GroupNorm32(32, in), eps 1e-5
	InConv  *nn.Conv2d    // in_layers.2: 3x3 in->out, pad 1 (in_layers.1 is SiLU)
	EmbProj *nn.Linear    // emb_layers.1: [out, E] (emb_layers.0 is SiLU)
	OutNorm *nn.GroupNorm // out_layers.0: GroupNorm32(32, out), eps 1e-5
	OutConv *nn.Conv2d    // out_layers.3: 3x3 out->out (out_layers.1 SiLU, .2 Dropout)
	// Skip is skip_connection, a 1x1 conv in->out; nil when in == out, where
	// ldm's skip_connection is nn.Identity() and has no weights.
	Skip *nn.Conv2d
}

// resNormEps is the GroupNorm eps of ldm's normalization() (GroupNorm32).
const resNormEps = 1e-5

// newResBlock binds the ResBlock at key (e.g. "input_blocks.1.0").
func newResBlock(w *Weights, key string, in, out, embDim int) *ResBlock {
	r := &ResBlock{
		InNorm:  w.GroupNorm(key+".in_layers.0", 32, in, resNormEps),
		InConv:  w.Conv2d(key+".in_layers.2", in, out, 3, 1, 1),
		EmbProj: w.Linear(key+".emb_layers.1", embDim, out, true),
		OutNorm: w.GroupNorm(key+".out_layers.0", 32, out, resNormEps),
		OutConv: w.Conv2d(key+".out_layers.3", out, out, 3, 1, 1),
	}
	if in != out {
		r.Skip = w.Conv2d(key+".skip_connection", in, out, 1, 1, 0)
	} else if w.Has(key + ".skip_connection.weight") {
		w.Fail(fmt.Errorf("unexpected tensor %q: %s keeps %d channels, so its skip is the identity", w.Prefix()+key+".skip_connection.weight", w.Prefix()+key, in))
	}
	return r
}

// Forward maps x [B, in, H, W] and the time embedding emb [B, E] to
// [B, out, H, W].
func (r *ResBlock) Forward(x, emb *nn.Tensor) *nn.Tensor {
	h := r.InNorm.Forward(x) // [B, in, H, W]
	nn.SiLU(h)
	h = r.InConv.Forward(h) // [B, out, H, W]

	e := emb.Clone() // [B, E]
	nn.SiLU(e)
	e = r.EmbProj.Forward(e) // [B, out]
	// h = h + emb_out[..., None, None]
	nn.AddBatchChannelBias(h, e) // [B, out, H, W]

	h = r.OutNorm.Forward(h) // [B, out, H, W]
	nn.SiLU(h)
	h = r.OutConv.Forward(h) // [B, out, H, W]

	if r.Skip != nil {
		nn.AddInPlace(h, r.Skip.Forward(x)) // [B, out, H, W]: skip_connection(x) + h
	} else {
		nn.AddInPlace(h, x) // [B, out, H, W]: x + h
	}
	return h
}

func (r *ResBlock) apply(x, emb, _ *nn.Tensor) *nn.Tensor { return r.Forward(x, emb) }
