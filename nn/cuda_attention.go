// cuda_attention.go: the nn compute engine on an NVIDIA GPU, part 4:
// scaled dot-product attention through the flash kernels of
// cuda/kernels/attention.cu (online softmax, fp32 accumulation, never
// materialising the [Lq, Lk] scores): tensor cores for fp16 tensors,
// plain fp32 arithmetic for fp32 ones. The options cover CLIP (causal),
// T5 (additive position bias, no scale, padding mask) and ELLA. Head dims
// up to 160. It does not do dropout, and it is not a general strided
// attention (q, k, v are [B, L, heads*d] tensors).
package nn

import (
	"fmt"
	"math"

	"github.com/sdbridge/sdbridge/cuda"
)

// GPUAttentionOpts modifies GPU attention (the CPU AttentionOpts plus
// causal and key masks).
type GPUAttentionOpts struct {
	// Scale multiplies q·k; 0 means 1/sqrt(head_dim). NoScale means 1 (T5).
	Scale   float32
	NoScale bool
	// Causal hides key j from query i when j > i (CLIP's text encoder).
	Causal bool
	// Bias [1 or B, 1 or heads, Lq, Lk] is added to the scaled scores (T5's
	// position bias), or nil.
	Bias *GPUTensor
	// KeyMask [B, Lk] keeps key j of batch item b where nonzero and drops
	// it where 0 (padding), or nil. A query that sees no key gets zeros.
	KeyMask *GPUTensor
}

// attnMaxHeadDim is the largest head dim the kernels take.
const attnMaxHeadDim = 160

// attnForceSIMT makes fp16 attention use the SIMT kernel (tests).
var attnForceSIMT = false

// attnMMADims are the padded head dims flash_attn_f16_d<DP> exists for.
var attnMMADims = []int{16, 32, 48, 64, 80, 96, 128, 160}

// Attention computes softmax(q k^T * scale) v per head, as
// ScaledDotProductAttention without a bias: q [B, Lq, heads*d], k and v
// [B, Lk, heads*d]; scale 0 means 1/sqrt(d). Returns [B, Lq, heads*d].
func (g *GPU) Attention(q, k, v *GPUTensor, heads int, scale float32) (*GPUTensor, error) {
	return g.AttentionOpts(q, k, v, heads, GPUAttentionOpts{Scale: scale})
}

// AttentionInto is Attention writing into out [B, Lq, heads*d]. scores is
// not used (the flash kernel keeps no score matrix) and may be nil; it is
// kept for callers written against the GEMM + softmax version.
func (g *GPU) AttentionInto(out, scores, q, k, v *GPUTensor, heads int, scale float32) error {
	return g.AttentionOptsInto(out, q, k, v, heads, GPUAttentionOpts{Scale: scale})
}

// AttentionOpts computes softmax(scale * q k^T + bias, masked) v per head:
// q [B, Lq, heads*d], k and v [B, Lk, heads*d]; returns [B, Lq, heads*d].
func (g *GPU) AttentionOpts(q, k, v *GPUTensor, heads int, o GPUAttentionOpts) (*GPUTensor, error) {
	if len(q.Shape) != 3 {
		return nil, fmt.Errorf("nn: cuda Attention: q %v is not [B, L, C]", q.Shape)
	}
	out, err := g.EmptyOf(q.DType, q.Shape...) // [B, Lq, heads*d]
	if err != nil {
		return nil, err
	}
	if err := g.AttentionOptsInto(out, q, k, v, heads, o); err != nil {
		out.Free()
		return nil, err
	}
	return out, nil
}

// AttentionOptsInto is AttentionOpts writing into out [B, Lq, heads*d].
func (g *GPU) AttentionOptsInto(out, q, k, v *GPUTensor, heads int, o GPUAttentionOpts) error {
	if len(q.Shape) != 3 || len(k.Shape) != 3 || len(v.Shape) != 3 || heads <= 0 {
		return fmt.Errorf("nn: cuda Attention: q %v, k %v, v %v with %d heads", q.Shape, k.Shape, v.Shape, heads)
	}
	b, lq, c := q.Shape[0], q.Shape[1], q.Shape[2]
	lk := k.Shape[1]
	if c%heads != 0 || k.Shape[2] != c || v.Shape[2] != c || v.Shape[1] != lk || k.Shape[0] != b || v.Shape[0] != b {
		return fmt.Errorf("nn: cuda Attention: q %v, k %v, v %v with %d heads", q.Shape, k.Shape, v.Shape, heads)
	}
	if out.Numel() != q.Numel() {
		return fmt.Errorf("nn: cuda Attention: out %v for q %v", out.Shape, q.Shape)
	}
	d := c / heads
	if d > attnMaxHeadDim {
		return fmt.Errorf("nn: cuda Attention: head dim %d > %d", d, attnMaxHeadDim)
	}
	dt, err := opDType("Attention", out, q, k, v, o.Bias, o.KeyMask)
	if err != nil {
		return err
	}
	var biasB, biasH int64
	if bs := o.Bias; bs != nil {
		s := bs.Shape
		if len(s) != 4 || (s[0] != 1 && s[0] != b) || (s[1] != 1 && s[1] != heads) || s[2] != lq || s[3] != lk {
			return fmt.Errorf("nn: cuda Attention: bias %v for [%d, %d, %d, %d] scores", s, b, heads, lq, lk)
		}
		if s[1] == heads {
			biasH = int64(lq * lk)
		}
		if s[0] == b && b > 1 {
			biasB = int64(s[1] * lq * lk)
		}
	}
	if m := o.KeyMask; m != nil && m.Numel() != b*lk {
		return fmt.Errorf("nn: cuda Attention: key mask %v for batch %d and %d keys", m.Shape, b, lk)
	}
	scale := o.Scale
	if scale == 0 {
		scale = float32(1 / math.Sqrt(float64(d)))
	}
	if o.NoScale {
		scale = 1
	}
	causal := 0
	if o.Causal {
		causal = 1
	}
	args := []any{q.Buf, k.Buf, v.Buf, out.Buf, bufOf(o.Bias), bufOf(o.KeyMask), heads, lq, lk, d, c, c, c, c,
		scale, causal, biasB, biasH}
	block := cuda.Dim3{X: 128}
	if dt == GPUF16 && !attnForceSIMT {
		dp := 0
		for _, x := range attnMMADims {
			if x >= d {
				dp = x
				break
			}
		}
		grid := cuda.Dim3{X: uint32((lq + 63) / 64), Y: uint32(heads), Z: uint32(b)}
		return g.launchBlock("attention.cu", fmt.Sprintf("flash_attn_f16_d%d", dp), grid, block, 0, args...)
	}
	grid := cuda.Dim3{X: uint32((lq + 7) / 8), Y: uint32(heads), Z: uint32(b)}
	shmem := (8 + 2*32) * (d + 1) * 4 // Q rows, K and V tiles as fp32
	return g.launchBlock("attention.cu", dt.kernel("flash_attn_simt"), grid, block, shmem, args...)
}
