// vae_decoder.go is the VAE decoder (ldm Decoder, give_pre_end=False,
// tanh_out=False): latent z to image. Levels are stored as decoder.up.N with
// up.(levels-1) the widest and run first; each level has num_res_blocks+1
// res blocks. It does not apply post_quant_conv or the scale factor
// (vae.go does).
package models

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// VAEUpLevel is one resolution level of the decoder (decoder.up.N).
type VAEUpLevel struct {
	Blocks   []*VAEResnetBlock // up.N.block.M, M = 0..num_res_blocks
	Attns    []*VAEAttnBlock   // up.N.attn.M (only with attn_resolutions; none in SD)
	Upsample *VAEUpsample      // up.N.upsample; nil on level 0
}

// VAEDecoder is ldm's Decoder.
type VAEDecoder struct {
	ConvIn  *nn.Conv2d    // decoder.conv_in [C_last, z, 3, 3]
	Mid     *VAEMid       // decoder.mid
	Up      []VAEUpLevel  // decoder.up.0 .. levels-1 (indexed as stored; run from the last)
	NormOut *nn.GroupNorm // decoder.norm_out [ch]
	ConvOut *nn.Conv2d    // decoder.conv_out [out, ch, 3, 3]
}

// loadVAEDecoder binds the decoder under w (prefix ending in "decoder.").
func loadVAEDecoder(w *Weights, cfg *VAEConfig) *VAEDecoder {
	levels := len(cfg.ChMult)
	in := cfg.Ch * cfg.ChMult[levels-1]
	d := &VAEDecoder{
		ConvIn: w.Conv2d("conv_in", cfg.ZChannels, in, 3, 1, 1),
		Mid:    loadVAEMid(w, "mid", in),
		Up:     make([]VAEUpLevel, levels),
	}
	for lvl := levels - 1; lvl >= 0; lvl-- {
		out := cfg.Ch * cfg.ChMult[lvl]
		u := &d.Up[lvl]
		for j := 0; j <= cfg.NumResBlocks; j++ {
			u.Blocks = append(u.Blocks, loadVAEResnetBlock(w, fmt.Sprintf("up.%d.block.%d", lvl, j), in, out))
			in = out
			if cfg.AttnLevels[lvl] {
				u.Attns = append(u.Attns, loadVAEAttnBlock(w, fmt.Sprintf("up.%d.attn.%d", lvl, j), out))
			}
		}
		if lvl != 0 {
			u.Upsample = loadVAEUpsample(w, fmt.Sprintf("up.%d.upsample", lvl), out)
		}
	}
	d.NormOut = w.GroupNorm("norm_out", vaeGroups, in, vaeEps)
	d.ConvOut = w.Conv2d("conv_out", in, cfg.OutChannels, 3, 1, 1)
	return d
}

// Forward maps z [B, z, h, w] to an image [B, out, f*h, f*w].
func (d *VAEDecoder) Forward(z *nn.Tensor) *nn.Tensor {
	h := d.ConvIn.Forward(z) // [B, C_last, h, w]
	h = d.Mid.Forward(h)     // [B, C_last, h, w]
	for lvl := len(d.Up) - 1; lvl >= 0; lvl-- {
		u := &d.Up[lvl]
		for j, b := range u.Blocks {
			h = b.Forward(h) // [B, C_lvl, h_lvl, w_lvl]
			if u.Attns != nil {
				h = u.Attns[j].Forward(h) // [B, C_lvl, h_lvl, w_lvl]
			}
		}
		if u.Upsample != nil {
			h = u.Upsample.Forward(h) // [B, C_lvl, 2h_lvl, 2w_lvl]
		}
	}
	d.NormOut.ForwardInPlace(h, true) // [B, ch, f*h, f*w]: silu(norm_out(h))
	return d.ConvOut.Forward(h)       // [B, out, f*h, f*w]
}
