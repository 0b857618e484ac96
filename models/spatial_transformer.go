// spatial_transformer.go: ldm's SpatialTransformer and BasicTransformerBlock
// (ldm/modules/attention.py): the attention stage after each res block on the
// attended levels of the U-Net and ControlNet.
//
// Handles both projection kinds: SD 1.x stores proj_in/proj_out as 1x1
// convolutions [C, C, 1, 1], SD 2.x as Linear [C, C]; a 1x1 conv is a
// per-pixel linear map, so both are applied as nn.Linear on tokens. It does
// not implement ldm's disable_self_attn or checkpointing options.
package models

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// Norm epsilons used by ldm's attention.py.
const (
	spatialNormEps = 1e-6 // SpatialTransformer.norm: Normalize() = GroupNorm(32, C, eps=1e-6)
	blockNormEps   = 1e-5 // BasicTransformerBlock norm1..3: nn.LayerNorm(C) default eps
)

// SpatialTransformer is ldm SpatialTransformer(C, heads, C/heads, depth,
// context_dim).
type SpatialTransformer struct {
	Norm    *nn.GroupNorm // norm: GroupNorm(32, C), eps 1e-6
	ProjIn  *nn.Linear    // proj_in: [C, C] (a 1x1 conv's weight viewed as [C, C]), with bias
	Blocks  []*BasicTransformerBlock
	ProjOut *nn.Linear // proj_out: [C, C], with bias
}

// newSpatialTransformer binds key (e.g. "input_blocks.1.1") for c channels.
func newSpatialTransformer(w *Weights, key string, c int, cfg UNetConfig) *SpatialTransformer {
	s := &SpatialTransformer{
		Norm:    w.GroupNorm(key+".norm", 32, c, spatialNormEps),
		ProjIn:  bindProj(w, key+".proj_in", c, cfg.UseLinearProj),
		ProjOut: bindProj(w, key+".proj_out", c, cfg.UseLinearProj),
	}
	for i := range cfg.TransformerDepth {
		s.Blocks = append(s.Blocks, newBasicTransformerBlock(w, fmt.Sprintf("%s.transformer_blocks.%d", key, i), c, cfg))
	}
	return s
}

// bindProj binds a c->c projection stored as Linear [c, c] (linear) or as a
// 1x1 conv [c, c, 1, 1], returning it as a Linear on tokens.
func bindProj(w *Weights, key string, c int, linear bool) *nn.Linear {
	if linear {
		return w.Linear(key, c, c, true)
	}
	wt := w.Tensor(key+".weight", c, c, 1, 1) // [C, C, 1, 1]
	l := &nn.Linear{Bias: w.Tensor(key+".bias", c)}
	if wt != nil {
		l.Weight = wt.Reshape(c, c) // [C, C]
	}
	return l
}

// Forward maps x [B, C, H, W] with context ctx [B, L, D] to [B, C, H, W].
func (s *SpatialTransformer) Forward(x, ctx *nn.Tensor) *nn.Tensor {
	h, w := x.Shape[2], x.Shape[3]
	t := s.Norm.Forward(x) // [B, C, H, W]
	// ldm (conv proj): x = proj_in(x); x = rearrange(x, 'b c h w -> b (h w) c')
	t = nn.ChannelsLast(t)  // [B, HW, C]
	t = s.ProjIn.Forward(t) // [B, HW, C]
	for _, b := range s.Blocks {
		t = b.Forward(t, ctx) // [B, HW, C]
	}
	// ldm (conv proj): x = rearrange(x, 'b (h w) c -> b c h w'); x = proj_out(x)
	t = s.ProjOut.Forward(t)         // [B, HW, C]
	out := nn.ChannelsFirst(t, h, w) // [B, C, H, W]
	nn.AddInPlace(out, x)            // [B, C, H, W]: x + x_in
	return out
}

func (s *SpatialTransformer) apply(x, _, ctx *nn.Tensor) *nn.Tensor { return s.Forward(x, ctx) }

// BasicTransformerBlock is ldm BasicTransformerBlock(C, heads, C/heads,
// context_dim, gated_ff=True): pre-norm self-attention, cross-attention and
// GEGLU feed-forward, each with a residual.
type BasicTransformerBlock struct {
	Norm1 *nn.LayerNorm   // norm1 [C], eps 1e-5
	Attn1 *CrossAttention // attn1: self-attention
	Norm2 *nn.LayerNorm   // norm2
	Attn2 *CrossAttention // attn2: cross-attention to the context
	Norm3 *nn.LayerNorm   // norm3
	FF    *FeedForward    // ff
}

func newBasicTransformerBlock(w *Weights, key string, c int, cfg UNetConfig) *BasicTransformerBlock {
	return &BasicTransformerBlock{
		Norm1: w.LayerNorm(key+".norm1", c, blockNormEps),
		Attn1: newCrossAttention(w, key+".attn1", c, c, cfg.NumHeads),
		Norm2: w.LayerNorm(key+".norm2", c, blockNormEps),
		Attn2: newCrossAttention(w, key+".attn2", c, cfg.ContextDim, cfg.NumHeads),
		Norm3: w.LayerNorm(key+".norm3", c, blockNormEps),
		FF:    newFeedForward(w, key+".ff", c),
	}
}

// Forward maps tokens x [B, N, C] with context ctx [B, L, D] to [B, N, C].
func (b *BasicTransformerBlock) Forward(x, ctx *nn.Tensor) *nn.Tensor {
	n := b.Norm1.Forward(x)                   // [B, N, C]
	x = nn.Add(x, b.Attn1.Forward(n, n))      // [B, N, C]: x = attn1(norm1(x)) + x
	n = b.Norm2.Forward(x)                    // [B, N, C]
	nn.AddInPlace(x, b.Attn2.Forward(n, ctx)) // [B, N, C]: x = attn2(norm2(x), context) + x
	n = b.Norm3.Forward(x)                    // [B, N, C]
	nn.AddInPlace(x, b.FF.Forward(n))         // [B, N, C]: x = ff(norm3(x)) + x
	return x
}
