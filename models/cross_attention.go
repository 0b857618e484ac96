// cross_attention.go: ldm's CrossAttention and GEGLU FeedForward
// (ldm/modules/attention.py), the two sublayers of a U-Net transformer block.
//
// Attention itself is nn.ScaledDotProductAttention (chunked/fast kernels live
// in nn); this file only wires the projections. No masks: SD 1.x U-Net
// attention is unmasked. No dropout (inference).
package models

import "github.com/sdbridge/sdbridge/nn"

// CrossAttention is ldm CrossAttention(query_dim=C, context_dim=D, heads,
// dim_head=C/heads): q from x, k and v from the context (x itself for attn1).
type CrossAttention struct {
	Heads int
	ToQ   *nn.Linear // to_q: [C, C], no bias
	ToK   *nn.Linear // to_k: [C, D], no bias
	ToV   *nn.Linear // to_v: [C, D], no bias
	ToOut *nn.Linear // to_out.0: [C, C] with bias (to_out.1 is Dropout)
}

// newCrossAttention binds key (e.g. "...transformer_blocks.0.attn2") for
// query width c and context width d (d == c for self-attention).
func newCrossAttention(w *Weights, key string, c, d, heads int) *CrossAttention {
	return &CrossAttention{
		Heads: heads,
		ToQ:   w.Linear(key+".to_q", c, c, false),
		ToK:   w.Linear(key+".to_k", d, c, false),
		ToV:   w.Linear(key+".to_v", d, c, false),
		ToOut: w.Linear(key+".to_out.0", c, c, true),
	}
}

// Forward attends from x [B, N, C] to ctx [B, L, D]; returns [B, N, C].
// The scale is dim_head^-0.5 (SDPA's default).
func (a *CrossAttention) Forward(x, ctx *nn.Tensor) *nn.Tensor {
	q := a.ToQ.Forward(x)   // [B, N, C]
	k := a.ToK.Forward(ctx) // [B, L, C]
	v := a.ToV.Forward(ctx) // [B, L, C]
	// q, k, v = rearrange(t, 'b n (h d) -> (b h) n d'); softmax(q k^T * scale) v; back to 'b n (h d)'
	o := nn.ScaledDotProductAttention(q, k, v, a.Heads, nn.AttentionOpts{}) // [B, N, C]
	return a.ToOut.Forward(o)                                               // [B, N, C]
}

// FeedForward is ldm FeedForward(dim=C, glu=True, mult=4): GEGLU then Linear.
type FeedForward struct {
	Proj *nn.Linear // ff.net.0.proj: [8C, C] -> value and gate halves of 4C
	Out  *nn.Linear // ff.net.2: [C, 4C] (ff.net.1 is Dropout)
}

// newFeedForward binds key (e.g. "...transformer_blocks.0.ff") for width c.
func newFeedForward(w *Weights, key string, c int) *FeedForward {
	return &FeedForward{
		Proj: w.Linear(key+".net.0.proj", c, 8*c, true),
		Out:  w.Linear(key+".net.2", 4*c, c, true),
	}
}

// Forward maps x [B, N, C] to [B, N, C].
func (f *FeedForward) Forward(x *nn.Tensor) *nn.Tensor {
	h := f.Proj.Forward(x) // [B, N, 8C]
	// x, gate = proj(x).chunk(2, dim=-1); x * F.gelu(gate)
	h = nn.GEGLU(h)         // [B, N, 4C]
	return f.Out.Forward(h) // [B, N, C]
}
