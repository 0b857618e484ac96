// unet_config.go: the U-Net hyperparameters (ldm UNetModel arguments) and
// their inference from tensor shapes, plus the SD 1.x architecture check.
//
// Everything except the head count is visible in the shapes of an ldm-layout
// checkpoint; the head count (8 for SD 1.x) is a config field. The same
// inference serves the ControlNet, whose encoder has the U-Net's layout.
// This file does not bind tensors (unet.go does) and does not rename other
// layouts (diffusers names are converted at the edge, controlnet_diffusers.go).
package models

import (
	"errors"
	"fmt"
	"slices"
)

// SD1Heads is the attention head count of every SD 1.x U-Net and ControlNet
// (v1-inference.yaml num_heads: 8); it cannot be read from the weights.
const SD1Heads = 8

// ErrNotSD1 marks a network of another architecture (SD 2.x, SDXL, ...).
var ErrNotSD1 = errors.New("not an SD 1.x network")

// UNetConfig mirrors ldm's UNetModel arguments for the SD 1.x family.
// Example values are SD 1.5's (CompVis v1-inference.yaml).
type UNetConfig struct {
	InChannels    int   // 4 (txt2img) or 9 (inpaint): input_blocks.0.0.weight [mc, in, 3, 3]
	OutChannels   int   // 4: out.2.weight [out, mc, 3, 3]; 0 for a ControlNet (no decoder)
	ModelChannels int   // 320 (mc)
	ChannelMult   []int // [1, 2, 4, 4]: level l has mc*ChannelMult[l] channels
	NumResBlocks  int   // 2 res blocks per encoder level (decoder levels have one more)
	// Attention says which levels carry a SpatialTransformer after each res
	// block. ldm's attention_resolutions [4, 2, 1] are downsampling factors:
	// levels 0, 1, 2 (ds 1, 2, 4) yes, level 3 (ds 8) no.
	Attention        []bool
	TransformerDepth int  // 1 BasicTransformerBlock per SpatialTransformer
	ContextDim       int  // 768: attn2.to_k in-width (CLIP ViT-L/14)
	UseLinearProj    bool // ldm use_linear_in_transformer: proj_in/proj_out stored as Linear [C, C] (SD 2.x), not 1x1 conv (SD 1.x)
	NumHeads         int  // 8 (SD1Heads); head dim = channels / NumHeads
}

// TimeEmbedDim is the width of the time embedding (4 * model channels).
func (c UNetConfig) TimeEmbedDim() int { return 4 * c.ModelChannels }

// Levels is the number of resolutions (len(ChannelMult)).
func (c UNetConfig) Levels() int { return len(c.ChannelMult) }

// NumInputBlocks is the number of ldm input_blocks (12 for SD 1.x): conv_in,
// NumResBlocks per level, one Downsample between levels.
func (c UNetConfig) NumInputBlocks() int {
	return 1 + c.Levels()*c.NumResBlocks + c.Levels() - 1
}

// inputBlockIndex is the input_blocks index of res block j of level l.
func (c UNetConfig) inputBlockIndex(l, j int) int { return 1 + l*(c.NumResBlocks+1) + j }

// Downscale is the total downsampling factor of the latent (8 for SD 1.x):
// latent sides must be multiples of it so skips and upsampled maps align.
func (c UNetConfig) Downscale() int { return 1 << (c.Levels() - 1) }

// InferUNetConfig reads a U-Net's configuration from the tensor shapes under
// w (already Sub'd to "model.diffusion_model."), with NumHeads = SD1Heads,
// and checks that it is an SD 1.x U-Net (CheckSD1). Errors name the key.
func InferUNetConfig(w *Weights) (UNetConfig, error) {
	cfg, err := inferEncoderConfig(w)
	if err != nil {
		return cfg, err
	}
	out, err := needShape(w, "out.2.weight", 4)
	if err != nil {
		return cfg, err
	}
	if out[1] != cfg.ModelChannels {
		return cfg, fmt.Errorf("tensor %q has shape %v, want [out, %d, 3, 3]", w.Prefix()+"out.2.weight", out, cfg.ModelChannels)
	}
	cfg.OutChannels = out[0]
	return cfg, cfg.CheckSD1()
}

// needShape returns the stored shape of key, which must exist with the rank.
func needShape(w *Weights, key string, rank int) ([]int, error) {
	s := w.Shape(key)
	if s == nil {
		return nil, fmt.Errorf("missing tensor %q", w.Prefix()+key)
	}
	if len(s) != rank {
		return nil, fmt.Errorf("tensor %q has shape %v, want %d dimensions", w.Prefix()+key, s, rank)
	}
	return s, nil
}

// inferEncoderConfig infers everything up to the middle block: the part the
// U-Net and the ControlNet share. SDXL markers are refused first so that an
// SDXL file gets a clear message rather than a layout complaint.
func inferEncoderConfig(w *Weights) (UNetConfig, error) {
	cfg := UNetConfig{NumHeads: SD1Heads}
	if w.Has("label_emb.0.0.weight") {
		return cfg, fmt.Errorf("%w: %q is present (class/pooled-text conditioning, as in SDXL)", ErrNotSD1, w.Prefix()+"label_emb.0.0.weight")
	}
	s, err := needShape(w, "input_blocks.0.0.weight", 4) // [mc, in, 3, 3]
	if err != nil {
		return cfg, err
	}
	cfg.ModelChannels, cfg.InChannels = s[0], s[1]
	te, err := needShape(w, "time_embed.0.weight", 2) // [4mc, mc]
	if err != nil {
		return cfg, err
	}
	if te[0] != cfg.TimeEmbedDim() || te[1] != cfg.ModelChannels {
		return cfg, fmt.Errorf("tensor %q has shape %v, want [%d, %d]", w.Prefix()+"time_embed.0.weight", te, cfg.TimeEmbedDim(), cfg.ModelChannels)
	}

	// Context width and projection kind from the middle block's transformer.
	k, err := needShape(w, "middle_block.1.transformer_blocks.0.attn2.to_k.weight", 2) // [C, ctx]
	if err != nil {
		return cfg, err
	}
	cfg.ContextDim = k[1]
	if cfg.ContextDim == 2048 || cfg.ContextDim == 1280 {
		return cfg, fmt.Errorf("%w: cross-attention context width %d (SDXL), SD 1.x uses 768", ErrNotSD1, cfg.ContextDim)
	}
	pin := w.Shape("middle_block.1.proj_in.weight")
	cfg.UseLinearProj = len(pin) == 2
	cfg.TransformerDepth = transformerDepth(w, "middle_block.1")

	// Res blocks per level: the blocks before the first Downsample.
	for i := 1; w.Has(fmt.Sprintf("input_blocks.%d.0.in_layers.0.weight", i)); i++ {
		cfg.NumResBlocks++
	}
	if cfg.NumResBlocks == 0 {
		return cfg, fmt.Errorf("missing tensor %q", w.Prefix()+"input_blocks.1.0.in_layers.0.weight")
	}
	// Walk the levels: NumResBlocks res blocks, then a Downsample or the end.
	for l := 0; ; l++ {
		first := cfg.inputBlockIndex(l, 0)
		key := fmt.Sprintf("input_blocks.%d.0.in_layers.2.weight", first)
		s, err := needShape(w, key, 4) // [C_l, C_in, 3, 3]
		if err != nil {
			return cfg, err
		}
		if s[0]%cfg.ModelChannels != 0 {
			return cfg, fmt.Errorf("tensor %q has %d output channels, not a multiple of model channels %d", w.Prefix()+key, s[0], cfg.ModelChannels)
		}
		cfg.ChannelMult = append(cfg.ChannelMult, s[0]/cfg.ModelChannels)
		attn := w.Has(fmt.Sprintf("input_blocks.%d.1.proj_in.weight", first))
		cfg.Attention = append(cfg.Attention, attn)
		for j := range cfg.NumResBlocks {
			idx := cfg.inputBlockIndex(l, j)
			if !w.Has(fmt.Sprintf("input_blocks.%d.0.in_layers.0.weight", idx)) {
				return cfg, fmt.Errorf("missing tensor %q", w.Prefix()+fmt.Sprintf("input_blocks.%d.0.in_layers.0.weight", idx))
			}
			if !attn {
				continue
			}
			blk := fmt.Sprintf("input_blocks.%d.1", idx)
			if d := transformerDepth(w, blk); d != cfg.TransformerDepth {
				return cfg, fmt.Errorf("%w: %s has %d transformer blocks but middle_block.1 has %d (per-level depth, as in SDXL)", ErrNotSD1, w.Prefix()+blk, d, cfg.TransformerDepth)
			}
		}
		down := cfg.inputBlockIndex(l, cfg.NumResBlocks)
		if !w.Has(fmt.Sprintf("input_blocks.%d.0.op.weight", down)) {
			if w.Has(fmt.Sprintf("input_blocks.%d.0.in_layers.0.weight", down)) {
				return cfg, fmt.Errorf("%s is a res block where a Downsample (%q) or the end of the encoder was expected", w.Prefix()+fmt.Sprintf("input_blocks.%d", down), fmt.Sprintf("input_blocks.%d.0.op.weight", down))
			}
			break
		}
	}
	return cfg, nil
}

// transformerDepth counts transformer_blocks.N under the SpatialTransformer
// at prefix blk.
func transformerDepth(w *Weights, blk string) int {
	n := 0
	for w.Has(fmt.Sprintf("%s.transformer_blocks.%d.norm1.weight", blk, n)) {
		n++
	}
	return n
}

// CheckSD1 refuses configurations outside the SD 1.x family: other block
// layouts (the residual names input_blocks.0..11 assume 4 levels x 2 res
// blocks), SD 2.x (context 1024, linear projections), and head counts that
// do not divide the channels. The context width itself is free (the golden
// models use 128; real SD 1.x uses 768).
func (c UNetConfig) CheckSD1() error {
	if err := c.checkSD1Encoder(); err != nil {
		return err
	}
	if c.InChannels != 4 && c.InChannels != 9 {
		return fmt.Errorf("%w: U-Net takes %d input channels; SD 1.x takes 4 (txt2img) or 9 (inpainting)", ErrNotSD1, c.InChannels)
	}
	if c.OutChannels != 4 {
		return fmt.Errorf("%w: U-Net predicts %d channels, want 4", ErrNotSD1, c.OutChannels)
	}
	if c.UseLinearProj {
		return fmt.Errorf("%w: proj_in/proj_out are linear layers (SD 2.x style); SD 1.x uses 1x1 convolutions", ErrNotSD1)
	}
	return nil
}

// checkSD1Encoder checks the parts shared with a ControlNet.
func (c UNetConfig) checkSD1Encoder() error {
	if c.ContextDim == 1024 {
		return fmt.Errorf("%w: cross-attention context width 1024 (SD 2.x, OpenCLIP ViT-H); SD 1.x uses 768", ErrNotSD1)
	}
	if c.Levels() != 4 || c.NumResBlocks != 2 {
		return fmt.Errorf("%w: %d levels x %d res blocks; SD 1.x has 4 x 2 (input_blocks.0..11)", ErrNotSD1, c.Levels(), c.NumResBlocks)
	}
	if !slices.Equal(c.Attention, []bool{true, true, true, false}) {
		return fmt.Errorf("%w: attention on levels %v; SD 1.x has it on levels 0-2 (attention_resolutions [4, 2, 1])", ErrNotSD1, c.Attention)
	}
	if c.TransformerDepth != 1 {
		return fmt.Errorf("%w: transformer depth %d; SD 1.x has 1", ErrNotSD1, c.TransformerDepth)
	}
	return c.checkShapes()
}

// checkShapes checks that the arithmetic of the config works: 32-group
// norms, heads dividing every attended width.
func (c UNetConfig) checkShapes() error {
	if c.NumHeads <= 0 {
		return fmt.Errorf("U-Net config: %d attention heads", c.NumHeads)
	}
	for l, m := range c.ChannelMult {
		ch := c.ModelChannels * m
		if ch%32 != 0 {
			return fmt.Errorf("U-Net config: level %d has %d channels, not a multiple of the 32 norm groups", l, ch)
		}
		if c.Attention[l] && ch%c.NumHeads != 0 {
			return fmt.Errorf("U-Net config: level %d has %d channels, not divisible by %d heads", l, ch, c.NumHeads)
		}
	}
	mid := c.ModelChannels * c.ChannelMult[len(c.ChannelMult)-1]
	if mid%c.NumHeads != 0 {
		return fmt.Errorf("U-Net config: middle block has %d channels, not divisible by %d heads", mid, c.NumHeads)
	}
	return nil
}
