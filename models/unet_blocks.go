// unet_blocks.go: the pieces the U-Net and the ControlNet share: the time
// embedding MLP, ldm's TimestepEmbedSequential container, and the binding of
// the encoder (input_blocks + middle_block) from a UNetConfig.
//
// It does not run the encoder: the U-Net keeps skips and the ControlNet taps
// zero convs, so each owns its loop (unet.go, controlnet.go).
package models

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// TimeEmbed is ldm's time_embed: Linear(mc, 4mc), SiLU, Linear(4mc, 4mc)
// on the sinusoidal embedding of the timesteps.
type TimeEmbed struct {
	Channels int        // mc: sinusoid width
	Linear1  *nn.Linear // time_embed.0: [4mc, mc]
	Linear2  *nn.Linear // time_embed.2: [4mc, 4mc] (time_embed.1 is SiLU)
}

func newTimeEmbed(w *Weights, mc int) *TimeEmbed {
	return &TimeEmbed{
		Channels: mc,
		Linear1:  w.Linear("time_embed.0", mc, 4*mc, true),
		Linear2:  w.Linear("time_embed.2", 4*mc, 4*mc, true),
	}
}

// Forward maps timesteps [B] (fractional allowed) to embeddings [B, 4mc].
func (t *TimeEmbed) Forward(timesteps []float32) *nn.Tensor {
	// timestep_embedding(t, mc, repeat_only=False): cat([cos, sin]), max_period 10000
	s := nn.TimestepEmbedding(timesteps, t.Channels, true, 0, 10000) // [B, mc]
	h := t.Linear1.Forward(s)                                        // [B, 4mc]
	nn.SiLU(h)
	return t.Linear2.Forward(h) // [B, 4mc]
}

// TimestepLayer is one module inside a TimestepBlock. The method is
// unexported: the set of layers is closed (ResBlock, SpatialTransformer,
// Downsample, Upsample, InputConv).
type TimestepLayer interface {
	apply(x, emb, ctx *nn.Tensor) *nn.Tensor
}

// TimestepBlock is ldm's TimestepEmbedSequential: its layers run in order,
// each given the time embedding or the context as it needs. Its name is the
// checkpoint prefix ("input_blocks.4", "middle_block").
type TimestepBlock struct {
	Name   string
	Layers []TimestepLayer
}

// Forward maps x [B, C, H, W] to the block output [B, C', H', W'].
func (b *TimestepBlock) Forward(x, emb, ctx *nn.Tensor) *nn.Tensor {
	for _, l := range b.Layers {
		x = l.apply(x, emb, ctx)
	}
	return x
}

// forwardTo is Forward with an Upsample layer resizing to h x w (the
// spatial size of the skip the next output block concatenates); h == 0
// keeps the plain 2x.
func (b *TimestepBlock) forwardTo(x, emb, ctx *nn.Tensor, h, w int) *nn.Tensor {
	for _, l := range b.Layers {
		if up, ok := l.(*Upsample); ok && h > 0 {
			x = up.ForwardTo(x, h, w) // [B, C, h, w]
			continue
		}
		x = l.apply(x, emb, ctx)
	}
	return x
}

// InputConv is input_blocks.0.0: conv_nd(2, in_channels, mc, 3, padding=1).
type InputConv struct {
	Conv *nn.Conv2d // [mc, in, 3, 3]
}

func (c *InputConv) apply(x, _, _ *nn.Tensor) *nn.Tensor { return c.Conv.Forward(x) }

// unetEncoder is the bound time embedding, input blocks and middle block.
type unetEncoder struct {
	TimeEmbed   *TimeEmbed
	InputBlocks []*TimestepBlock // input_blocks.0 .. NumInputBlocks-1
	MiddleBlock *TimestepBlock   // middle_block: ResBlock, SpatialTransformer, ResBlock
	// SkipChannels[i] is the channel count of input block i's output
	// (ldm's input_block_chans).
	SkipChannels []int
}

// bindEncoder binds the encoder of cfg under w, following ldm UNetModel's
// constructor. Errors are left in w (sticky).
func bindEncoder(w *Weights, cfg UNetConfig) *unetEncoder {
	mc, emb := cfg.ModelChannels, cfg.TimeEmbedDim()
	e := &unetEncoder{TimeEmbed: newTimeEmbed(w, mc)}
	e.InputBlocks = append(e.InputBlocks, &TimestepBlock{Name: "input_blocks.0", Layers: []TimestepLayer{
		&InputConv{Conv: w.Conv2d("input_blocks.0.0", cfg.InChannels, mc, 3, 1, 1)},
	}})
	e.SkipChannels = append(e.SkipChannels, mc)
	ch := mc
	for l, mult := range cfg.ChannelMult {
		for range cfg.NumResBlocks {
			name := fmt.Sprintf("input_blocks.%d", len(e.InputBlocks))
			out := mc * mult
			blk := &TimestepBlock{Name: name, Layers: []TimestepLayer{newResBlock(w, name+".0", ch, out, emb)}}
			ch = out
			if cfg.Attention[l] {
				blk.Layers = append(blk.Layers, newSpatialTransformer(w, name+".1", ch, cfg))
			}
			e.InputBlocks = append(e.InputBlocks, blk)
			e.SkipChannels = append(e.SkipChannels, ch)
		}
		if l != cfg.Levels()-1 {
			name := fmt.Sprintf("input_blocks.%d", len(e.InputBlocks))
			e.InputBlocks = append(e.InputBlocks, &TimestepBlock{Name: name, Layers: []TimestepLayer{newDownsample(w, name+".0", ch)}})
			e.SkipChannels = append(e.SkipChannels, ch)
		}
	}
	e.MiddleBlock = &TimestepBlock{Name: "middle_block", Layers: []TimestepLayer{
		newResBlock(w, "middle_block.0", ch, ch, emb),
		newSpatialTransformer(w, "middle_block.1", ch, cfg),
		newResBlock(w, "middle_block.2", ch, ch, emb),
	}}
	return e
}

// checkConditioning validates the inputs shared by U-Net and ControlNet:
// x [B, in, H, W] with H, W >= 1 (any size: odd sides are handled as ldm
// does, see updown.go), one timestep per batch row, context [B, L, ContextDim].
func checkConditioning(what string, cfg UNetConfig, x *nn.Tensor, timesteps []float32, ctx *nn.Tensor) error {
	if x == nil || len(x.Shape) != 4 || x.Shape[1] != cfg.InChannels {
		return fmt.Errorf("%s: x has shape %v, want [B, %d, H, W]", what, shapeOf(x), cfg.InChannels)
	}
	b, h, w := x.Shape[0], x.Shape[2], x.Shape[3]
	if h < 1 || w < 1 {
		return fmt.Errorf("%s: latent %dx%d is empty", what, h, w)
	}
	if len(timesteps) != b {
		return fmt.Errorf("%s: %d timesteps for a batch of %d", what, len(timesteps), b)
	}
	if ctx == nil || len(ctx.Shape) != 3 || ctx.Shape[0] != b || ctx.Shape[2] != cfg.ContextDim || ctx.Shape[1] == 0 {
		return fmt.Errorf("%s: context has shape %v, want [%d, L, %d]", what, shapeOf(ctx), b, cfg.ContextDim)
	}
	return nil
}

func shapeOf(t *nn.Tensor) []int {
	if t == nil {
		return nil
	}
	return t.Shape
}
