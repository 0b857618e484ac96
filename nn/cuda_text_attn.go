// cuda_text_attn.go: attention for the text models' short sequences on
// the GPU (text.cu's text_attention: one thread block per query row, the
// row's scores in shared memory), with what CLIP and T5 need and the plain
// g.Attention lacks: an additive bias (T5's position bias with the key
// mask folded in), causal masking (CLIP) and unscaled scores (T5). It is
// the GPU twin of ScaledDotProductAttention with AttentionOpts. It does not
// tile keys or use tensor cores: Lk is limited by shared memory (a few
// thousand keys), which text never approaches.
package nn

import (
	"fmt"
	"math"

	"github.com/sdbridge/sdbridge/cuda"
)

// TextAttentionOpts modifies TextAttention.
type TextAttentionOpts struct {
	// Scale multiplies q·k; 0 means 1/sqrt(head_dim). NoScale means 1 (T5).
	Scale   float32
	NoScale bool
	// Causal drops keys after the query's own position (CLIP).
	Causal bool
	// Bias is added to the scores: [1 or B, 1 or heads, Lq, Lk], or nil.
	Bias *GPUTensor
}

// textAttnMaxKeys bounds Lk so the score row fits in 48 KiB of shared
// memory.
const textAttnMaxKeys = 48 << 10 / 4

// TextAttention computes softmax(q k^T * scale + bias) v per head, as
// ScaledDotProductAttention: q [B, Lq, heads*d], k and v [B, Lk, heads*d];
// returns [B, Lq, heads*d].
func (g *GPU) TextAttention(q, k, v *GPUTensor, heads int, opt TextAttentionOpts) (*GPUTensor, error) {
	if len(q.Shape) != 3 || len(k.Shape) != 3 || len(v.Shape) != 3 || heads <= 0 || q.Shape[2]%heads != 0 ||
		k.Shape[0] != q.Shape[0] || k.Shape[2] != q.Shape[2] || v.Shape[0] != k.Shape[0] || v.Shape[1] != k.Shape[1] || v.Shape[2] != k.Shape[2] {
		return nil, fmt.Errorf("nn: cuda TextAttention: q %v, k %v, v %v with %d heads", q.Shape, k.Shape, v.Shape, heads)
	}
	b, lq, c := q.Shape[0], q.Shape[1], q.Shape[2]
	lk, d := k.Shape[1], c/heads
	if lk > textAttnMaxKeys {
		return nil, fmt.Errorf("nn: cuda TextAttention: %d keys exceed the %d that fit shared memory", lk, textAttnMaxKeys)
	}
	bb, bh := 1, 1
	if opt.Bias != nil {
		bs := opt.Bias.Shape
		if len(bs) != 4 || (bs[0] != 1 && bs[0] != b) || (bs[1] != 1 && bs[1] != heads) || bs[2] != lq || bs[3] != lk {
			return nil, fmt.Errorf("nn: cuda TextAttention: bias %v for [%d, %d, %d, %d] scores", bs, b, heads, lq, lk)
		}
		bb, bh = bs[0], bs[1]
	}
	if err := sameDType("TextAttention", q, k, v, opt.Bias); err != nil {
		return nil, err
	}
	scale := opt.Scale
	if scale == 0 {
		scale = float32(1 / math.Sqrt(float64(d)))
	}
	if opt.NoScale {
		scale = 1
	}
	causal := 0
	if opt.Causal {
		causal = 1
	}
	out, err := g.emptyLike(q, b, lq, c) // [B, Lq, heads*d]
	if err != nil {
		return nil, err
	}
	if err := g.textLaunch("text_attention", q, cuda.Dim3{X: uint32(b * heads * lq)}, 4*lk,
		q.Buf, k.Buf, v.Buf, bufOf(opt.Bias), out.Buf, heads, lq, lk, d, scale, bb, bh, causal); err != nil {
		out.Free()
		return nil, err
	}
	return out, nil
}
