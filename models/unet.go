// unet.go: the SD 1.x denoising U-Net in the ldm layout (openaimodel.py
// UNetModel, keys under "model.diffusion_model."): binding and forward pass,
// with optional named ControlNet residuals.
//
// Reference float32 code written against nn's kernels. It does not handle
// other layouts (convert names at the edge first), SDXL/SD 2.x (refused by
// the config check), class conditioning (label_emb), or v-prediction (the
// output is whatever the weights predict; the sampler interprets it).
package models

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// UNet is the bound SD 1.x U-Net.
type UNet struct {
	Config      UNetConfig
	TimeEmbed   *TimeEmbed       // time_embed
	InputBlocks []*TimestepBlock // input_blocks.0..11
	MiddleBlock *TimestepBlock   // middle_block
	// OutputBlocks are output_blocks.0..11; block k consumes the skip of
	// input block len(InputBlocks)-1-k, concatenated on channels.
	OutputBlocks []*TimestepBlock
	OutNorm      *nn.GroupNorm // out.0: GroupNorm32(32, mc), eps 1e-5 (out.1 is SiLU)
	OutConv      *nn.Conv2d    // out.2: 3x3 mc -> out
	// Unused lists stored keys under the U-Net prefix that no layer bound
	// (for the caller to log; SD 1.x files normally have none).
	Unused []string
}

// LoadUNet infers the configuration from w (Sub'd to the U-Net prefix,
// e.g. "model.diffusion_model."), checks it is SD 1.x, and binds it.
func LoadUNet(w *Weights) (*UNet, error) {
	cfg, err := InferUNetConfig(w)
	if err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	return NewUNet(w, cfg)
}

// NewUNet binds a U-Net of cfg from w strictly: every tensor present with
// the expected shape, else an error naming the key.
func NewUNet(w *Weights, cfg UNetConfig) (*UNet, error) {
	if err := cfg.checkShapes(); err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	enc := bindEncoder(w, cfg)
	u := &UNet{
		Config:      cfg,
		TimeEmbed:   enc.TimeEmbed,
		InputBlocks: enc.InputBlocks,
		MiddleBlock: enc.MiddleBlock,
	}
	// Decoder, as ldm builds output_blocks: per level from the deepest,
	// NumResBlocks+1 res blocks each eating one skip, attention where the
	// level has it, an Upsample closing every level but the last.
	mc, emb := cfg.ModelChannels, cfg.TimeEmbedDim()
	skips := enc.SkipChannels
	ch := mc * cfg.ChannelMult[cfg.Levels()-1]
	for l := cfg.Levels() - 1; l >= 0; l-- {
		out := mc * cfg.ChannelMult[l]
		for j := range cfg.NumResBlocks + 1 {
			name := fmt.Sprintf("output_blocks.%d", len(u.OutputBlocks))
			skip := skips[len(skips)-1]
			skips = skips[:len(skips)-1]
			blk := &TimestepBlock{Name: name, Layers: []TimestepLayer{newResBlock(w, name+".0", ch+skip, out, emb)}}
			ch = out
			if cfg.Attention[l] {
				blk.Layers = append(blk.Layers, newSpatialTransformer(w, name+".1", ch, cfg))
			}
			if l > 0 && j == cfg.NumResBlocks {
				blk.Layers = append(blk.Layers, newUpsample(w, fmt.Sprintf("%s.%d", name, len(blk.Layers)), ch))
			}
			u.OutputBlocks = append(u.OutputBlocks, blk)
		}
	}
	u.OutNorm = w.GroupNorm("out.0", 32, mc, resNormEps)
	u.OutConv = w.Conv2d("out.2", mc, cfg.OutChannels, 3, 1, 1)
	if err := w.Err(); err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	u.Unused = w.Unused()
	return u, nil
}

// Forward predicts the noise for x [B, in, H, W] at timesteps [B]
// (fractional allowed) under context [B, L, ContextDim] (any L: 77 for
// CLIP, 64 for ELLA, 141 for both). res may be nil; see Residuals for the
// names. H and W may be any size >= 1 (odd sides as in ldm). Returns
// [B, out, H, W].
func (u *UNet) Forward(x *nn.Tensor, timesteps []float32, ctx *nn.Tensor, res Residuals) (*nn.Tensor, error) {
	if err := checkConditioning("unet", u.Config, x, timesteps, ctx); err != nil {
		return nil, err
	}
	if err := res.checkNames(u.Config); err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	emb := u.TimeEmbed.Forward(timesteps) // [B, 4mc]

	h := x                                             // [B, in, H, W]
	skips := make([]*nn.Tensor, 0, len(u.InputBlocks)) // hs
	for _, blk := range u.InputBlocks {
		h = blk.Forward(h, emb, ctx) // [B, C_i, H_i, W_i]
		skips = append(skips, h)
	}
	h = u.MiddleBlock.Forward(h, emb, ctx) // [B, C_mid, ceil(H/8), ceil(W/8)]
	h, err := res.add(MiddleBlockResidual, h)
	if err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	for k, blk := range u.OutputBlocks {
		i := len(skips) - 1 - k
		// skip = hs.pop() + control.pop()
		skip, err := res.add(InputBlockResidual(i), skips[i]) // [B, C_i, H_i, W_i]
		if err != nil {
			return nil, fmt.Errorf("unet: %w", err)
		}
		h = nn.Concat(1, h, skip) // [B, C + C_i, H_i, W_i]: th.cat([h, hs.pop()], dim=1)
		// output_shape = hs[-1].shape: an upsampler resizes to the next skip
		th, tw := 0, 0
		if i > 0 {
			th, tw = skips[i-1].Shape[2], skips[i-1].Shape[3]
		}
		h = blk.forwardTo(h, emb, ctx, th, tw) // [B, C_k, H_k, W_k]
	}
	h = u.OutNorm.Forward(h) // [B, mc, H, W]
	nn.SiLU(h)
	return u.OutConv.Forward(h), nil // [B, out, H, W]
}
