// vae_encoder.go is the VAE encoder (ldm Encoder, double_z=True): image to
// the mean and log-variance of the latent distribution, before quant_conv.
// It does not apply quant_conv or the scale factor (vae.go does).
package models

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// VAEDownLevel is one resolution level of the encoder (encoder.down.N).
type VAEDownLevel struct {
	Blocks     []*VAEResnetBlock // down.N.block.M
	Attns      []*VAEAttnBlock   // down.N.attn.M (only with attn_resolutions; none in SD)
	Downsample *VAEDownsample    // down.N.downsample; nil on the last level
}

// VAEEncoder is ldm's Encoder.
type VAEEncoder struct {
	ConvIn  *nn.Conv2d     // encoder.conv_in [ch, in, 3, 3]
	Down    []VAEDownLevel // encoder.down.0 .. levels-1
	Mid     *VAEMid        // encoder.mid
	NormOut *nn.GroupNorm  // encoder.norm_out [C_last]
	ConvOut *nn.Conv2d     // encoder.conv_out [2z, C_last, 3, 3]
}

// loadVAEEncoder binds the encoder under w (prefix ending in "encoder.").
func loadVAEEncoder(w *Weights, cfg *VAEConfig) *VAEEncoder {
	e := &VAEEncoder{ConvIn: w.Conv2d("conv_in", cfg.InChannels, cfg.Ch, 3, 1, 1)}
	in := cfg.Ch
	last := len(cfg.ChMult) - 1
	for lvl, m := range cfg.ChMult {
		out := cfg.Ch * m
		var d VAEDownLevel
		for j := 0; j < cfg.NumResBlocks; j++ {
			d.Blocks = append(d.Blocks, loadVAEResnetBlock(w, fmt.Sprintf("down.%d.block.%d", lvl, j), in, out))
			in = out
			if cfg.AttnLevels[lvl] {
				d.Attns = append(d.Attns, loadVAEAttnBlock(w, fmt.Sprintf("down.%d.attn.%d", lvl, j), out))
			}
		}
		if extra := fmt.Sprintf("down.%d.block.%d.conv1.weight", lvl, cfg.NumResBlocks); w.Has(extra) {
			w.Fail(fmt.Errorf("unexpected tensor %q: the decoder implies %d res blocks per level", w.Prefix()+extra, cfg.NumResBlocks))
		}
		if lvl != last {
			d.Downsample = loadVAEDownsample(w, fmt.Sprintf("down.%d.downsample", lvl), out)
		}
		e.Down = append(e.Down, d)
	}
	e.Mid = loadVAEMid(w, "mid", in)
	e.NormOut = w.GroupNorm("norm_out", vaeGroups, in, vaeEps)
	e.ConvOut = w.Conv2d("conv_out", in, 2*cfg.ZChannels, 3, 1, 1)
	return e
}

// Forward maps an image [B, in, H, W] to moments [B, 2z, H/f, W/f].
func (e *VAEEncoder) Forward(x *nn.Tensor) *nn.Tensor {
	h := e.ConvIn.Forward(x) // [B, ch, H, W]
	for _, d := range e.Down {
		for j, b := range d.Blocks {
			h = b.Forward(h) // [B, C_lvl, H_lvl, W_lvl]
			if d.Attns != nil {
				h = d.Attns[j].Forward(h) // [B, C_lvl, H_lvl, W_lvl]
			}
		}
		if d.Downsample != nil {
			h = d.Downsample.Forward(h) // [B, C_lvl, H_lvl/2, W_lvl/2]
		}
	}
	h = e.Mid.Forward(h)              // [B, C_last, H/f, W/f]
	e.NormOut.ForwardInPlace(h, true) // [B, C_last, H/f, W/f]: silu(norm_out(h))
	return e.ConvOut.Forward(h)       // [B, 2z, H/f, W/f]
}
