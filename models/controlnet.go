// controlnet.go: the SD 1.x ControlNet network (lllyasviel/ControlNet
// cldm/cldm.py ControlNet) in the ldm layout: a trained copy of the U-Net
// encoder plus a hint encoder, producing the 13 named residuals the U-Net
// adds to its skips and middle block (unet_residuals.go).
//
// Binding takes a *Weights already in ldm names without prefix (the file
// forms are sorted out in controlnet_load.go). Strength, soft weights,
// start/end and CFG handling are the plugin's business, not this file's.
package models

import (
	"fmt"
	"slices"

	"github.com/sdbridge/sdbridge/nn"
)

// ControlNet is the bound network.
type ControlNet struct {
	Config      UNetConfig       // encoder config; OutChannels is 0 (no decoder)
	TimeEmbed   *TimeEmbed       // time_embed: its own trained copy, not the U-Net's
	Hint        *HintBlock       // input_hint_block
	InputBlocks []*TimestepBlock // input_blocks.0..11
	ZeroConvs   []*nn.Conv2d     // zero_convs.i.0: 1x1, C_i -> C_i, one per input block
	MiddleBlock *TimestepBlock   // middle_block
	MiddleOut   *nn.Conv2d       // middle_block_out.0: 1x1, C_mid -> C_mid
	Unused      []string         // stored keys no layer bound, for the caller to log
}

// InferControlNetConfig reads the encoder configuration from w (ldm names,
// no prefix) with NumHeads = SD1Heads and checks it is an SD 1.x ControlNet.
func InferControlNetConfig(w *Weights) (UNetConfig, error) {
	cfg, err := inferEncoderConfig(w)
	if err != nil {
		return cfg, fmt.Errorf("controlnet: %w", err)
	}
	if !w.Has("zero_convs.0.0.weight") {
		return cfg, fmt.Errorf("controlnet: missing tensor %q: not a ControlNet", w.Prefix()+"zero_convs.0.0.weight")
	}
	if err := cfg.checkSD1Encoder(); err != nil {
		return cfg, fmt.Errorf("controlnet: %w", err)
	}
	if cfg.InChannels != 4 {
		return cfg, fmt.Errorf("controlnet: %w: takes %d latent channels, want 4", ErrNotSD1, cfg.InChannels)
	}
	return cfg, nil
}

// NewControlNet binds a ControlNet of cfg from w strictly.
func NewControlNet(w *Weights, cfg UNetConfig) (*ControlNet, error) {
	if err := cfg.checkShapes(); err != nil {
		return nil, fmt.Errorf("controlnet: %w", err)
	}
	enc := bindEncoder(w, cfg)
	c := &ControlNet{
		Config:      cfg,
		TimeEmbed:   enc.TimeEmbed,
		Hint:        newHintBlock(w, cfg.ModelChannels),
		InputBlocks: enc.InputBlocks,
		MiddleBlock: enc.MiddleBlock,
	}
	for i, ch := range enc.SkipChannels {
		c.ZeroConvs = append(c.ZeroConvs, w.Conv2d(fmt.Sprintf("zero_convs.%d.0", i), ch, ch, 1, 1, 0))
	}
	mid := cfg.ModelChannels * cfg.ChannelMult[cfg.Levels()-1]
	c.MiddleOut = w.Conv2d("middle_block_out.0", mid, mid, 1, 1, 0)
	if err := w.Err(); err != nil {
		return nil, fmt.Errorf("controlnet: %w", err)
	}
	c.Unused = w.Unused()
	return c, nil
}

// CheckCompatible refuses a ControlNet built for another U-Net: its
// residuals would not fit the skips (different widths or levels) or its
// context would not be what it was trained on.
func (c *ControlNet) CheckCompatible(u UNetConfig) error {
	a := c.Config
	switch {
	case a.ContextDim != u.ContextDim:
		return fmt.Errorf("controlnet: %w: built for context width %d, the U-Net uses %d", ErrNotSD1, a.ContextDim, u.ContextDim)
	case a.ModelChannels != u.ModelChannels || !slices.Equal(a.ChannelMult, u.ChannelMult):
		return fmt.Errorf("controlnet: %w: channels %d x %v, the U-Net has %d x %v", ErrNotSD1, a.ModelChannels, a.ChannelMult, u.ModelChannels, u.ChannelMult)
	case a.NumResBlocks != u.NumResBlocks || !slices.Equal(a.Attention, u.Attention) || a.TransformerDepth != u.TransformerDepth:
		return fmt.Errorf("controlnet: %w: block layout (%d res blocks, attention %v, depth %d) differs from the U-Net's (%d, %v, %d)",
			ErrNotSD1, a.NumResBlocks, a.Attention, a.TransformerDepth, u.NumResBlocks, u.Attention, u.TransformerDepth)
	}
	return nil
}

// HintEncode runs the hint encoder: hint [B, 3, 8h, 8w] (RGB in [0, 1]) to
// [B, mc, h, w]. It does not depend on the step: encode once per image.
func (c *ControlNet) HintEncode(hint *nn.Tensor) (*nn.Tensor, error) {
	hc := c.Hint.HintChannels()
	if hint == nil || len(hint.Shape) != 4 || hint.Shape[1] != hc {
		return nil, fmt.Errorf("controlnet: hint has shape %v, want [B, %d, H, W]", shapeOf(hint), hc)
	}
	if hint.Shape[2]%8 != 0 || hint.Shape[3]%8 != 0 {
		return nil, fmt.Errorf("controlnet: hint is %dx%d, want a multiple of 8 (8x the latent size)", hint.Shape[2], hint.Shape[3])
	}
	return c.Hint.Forward(hint), nil // [B, mc, h, w]
}

// Forward returns the residuals for x [B, 4, h, w] at timesteps [B] under
// context [B, L, D] with hint [B or 1, 3, 8h, 8w]. It encodes the hint
// every call; use HintEncode + ForwardEncoded to reuse it across steps.
func (c *ControlNet) Forward(x, hint *nn.Tensor, timesteps []float32, ctx *nn.Tensor) (Residuals, error) {
	g, err := c.HintEncode(hint)
	if err != nil {
		return nil, err
	}
	return c.ForwardEncoded(x, g, timesteps, ctx)
}

// ForwardEncoded returns the 13 residuals (input_blocks.0..11, middle_block)
// given the encoded hint guided [B or 1, mc, h, w] from HintEncode. Strength
// is not applied. x is the U-Net's input for this step; for a 9-channel
// inpainting U-Net pass its first 4 channels (A1111 hook.py does the same).
func (c *ControlNet) ForwardEncoded(x, guided *nn.Tensor, timesteps []float32, ctx *nn.Tensor) (Residuals, error) {
	if err := checkConditioning("controlnet", c.Config, x, timesteps, ctx); err != nil {
		return nil, err
	}
	b, mc := x.Shape[0], c.Config.ModelChannels
	want := []int{b, mc, x.Shape[2], x.Shape[3]}
	if guided == nil || len(guided.Shape) != 4 || !slices.Equal(guided.Shape[1:], want[1:]) || (guided.Shape[0] != b && guided.Shape[0] != 1) {
		return nil, fmt.Errorf("controlnet: encoded hint has shape %v, want %v: the hint image must be exactly 8x the latent (%dx%d px)",
			shapeOf(guided), want, 8*x.Shape[2], 8*x.Shape[3])
	}
	if guided.Shape[0] != b {
		// One hint for the whole batch: repeat it along the batch.
		rows := make([]*nn.Tensor, b)
		for i := range rows {
			rows[i] = guided
		}
		guided = nn.Concat(0, rows...) // [B, mc, h, w]
	}

	emb := c.TimeEmbed.Forward(timesteps) // [B, 4mc]
	res := make(Residuals, len(c.InputBlocks)+1)
	h := x // [B, 4, h, w]
	for i, blk := range c.InputBlocks {
		h = blk.Forward(h, emb, ctx) // [B, C_i, H_i, W_i]
		if i == 0 {
			// h = module(h, emb, context); h += guided_hint; guided_hint = None
			h = nn.Add(h, guided) // [B, mc, h, w]
		}
		res[InputBlockResidual(i)] = c.ZeroConvs[i].Forward(h) // [B, C_i, H_i, W_i]
	}
	h = c.MiddleBlock.Forward(h, emb, ctx)            // [B, C_mid, h/8, w/8]
	res[MiddleBlockResidual] = c.MiddleOut.Forward(h) // [B, C_mid, h/8, w/8]
	return res, nil
}
