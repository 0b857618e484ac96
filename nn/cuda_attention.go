// cuda_attention.go: the nn compute engine on an NVIDIA GPU, part 4:
// scaled dot-product attention through the flash kernels of
// cuda/kernels/attention.cu (online softmax, fp32 accumulation, never
// materialising the [Lq, Lk] scores): tensor cores for fp16 tensors,
// plain fp32 arithmetic for fp32 ones. The options cover CLIP (causal),
// T5 (additive position bias, no scale, padding mask) and ELLA. Head dims
// up to 160 run on the tiled kernels, 161..512 (the VAE's one 512-wide
// head) on the wide ones (the head dim split over warps for fp16, one
// warp per query row for fp32). q, k and v are [B, L, heads*d] tensors, or the packed
// outputs of a fused q/k/v (or k/v) projection read in place. It does not
// do dropout or general strided views.
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

// attnMaxHeadDim is the largest head dim the kernels take;
// attnTiledMaxHeadDim the largest the tiled (non-wide) kernels take.
const (
	attnMaxHeadDim      = 512
	attnTiledMaxHeadDim = 160
)

// attnForceSIMT makes fp16 attention use the SIMT kernel (tests).
var attnForceSIMT = false

// attnMMADims are the padded head dims flash_attn_f16_d<DP> exists for,
// attnWideDims those of flash_attn_f16_wide_d<DP> (DP/64 warps a block).
var (
	attnMMADims  = []int{16, 32, 48, 64, 80, 96, 128, 160}
	attnWideDims = []int{256, 512}
)

// paddedDim is the first of dims >= d (dims ascending; d <= the last).
func paddedDim(d int, dims []int) int {
	for _, x := range dims {
		if x >= d {
			return x
		}
	}
	return dims[len(dims)-1]
}

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
	if k.Shape[2] != c || v.Shape[2] != c || v.Shape[1] != lk || k.Shape[0] != b || v.Shape[0] != b {
		return fmt.Errorf("nn: cuda Attention: q %v, k %v, v %v with %d heads", q.Shape, k.Shape, v.Shape, heads)
	}
	return g.attention(attnOperands{out: out, q: q, k: k, v: v, b: b, lq: lq, lk: lk, c: c, sq: c, sk: c, sv: c}, heads, o)
}

// AttentionQKV is self-attention on the output of one fused q/k/v
// projection: qkv [B, L, 3*heads*d] holds q, k and v side by side in each
// row (weights concatenated [wq; wk; wv]); the kernel reads them in place.
// Returns [B, L, heads*d].
func (g *GPU) AttentionQKV(qkv *GPUTensor, heads int, o GPUAttentionOpts) (*GPUTensor, error) {
	if len(qkv.Shape) != 3 || qkv.Shape[2]%3 != 0 {
		return nil, fmt.Errorf("nn: cuda AttentionQKV: qkv %v is not [B, L, 3C]", qkv.Shape)
	}
	b, l, c := qkv.Shape[0], qkv.Shape[1], qkv.Shape[2]/3
	out, err := g.EmptyOf(qkv.DType, b, l, c) // [B, L, C]
	if err != nil {
		return nil, err
	}
	ops := attnOperands{out: out, q: qkv, k: qkv, v: qkv, koff: c, voff: 2 * c, b: b, lq: l, lk: l, c: c, sq: 3 * c, sk: 3 * c, sv: 3 * c}
	if err := g.attention(ops, heads, o); err != nil {
		out.Free()
		return nil, err
	}
	return out, nil
}

// AttentionKV is cross-attention with a fused k/v projection of the
// context: q [B, Lq, heads*d], kv [B, Lk, 2*heads*d] (k then v in each
// row). Returns [B, Lq, heads*d].
func (g *GPU) AttentionKV(q, kv *GPUTensor, heads int, o GPUAttentionOpts) (*GPUTensor, error) {
	if len(q.Shape) != 3 || len(kv.Shape) != 3 || kv.Shape[2] != 2*q.Shape[2] || kv.Shape[0] != q.Shape[0] {
		return nil, fmt.Errorf("nn: cuda AttentionKV: q %v, kv %v", q.Shape, kv.Shape)
	}
	b, lq, c := q.Shape[0], q.Shape[1], q.Shape[2]
	out, err := g.EmptyOf(q.DType, b, lq, c) // [B, Lq, C]
	if err != nil {
		return nil, err
	}
	ops := attnOperands{out: out, q: q, k: kv, v: kv, voff: c, b: b, lq: lq, lk: kv.Shape[1], c: c, sq: c, sk: 2 * c, sv: 2 * c}
	if err := g.attention(ops, heads, o); err != nil {
		out.Free()
		return nil, err
	}
	return out, nil
}

// attnOperands locates q, k, v and out: element offsets of k and v in
// their tensors (packed projections) and the row strides of each.
type attnOperands struct {
	out, q, k, v *GPUTensor
	koff, voff   int
	b, lq, lk, c int
	sq, sk, sv   int
}

// attention checks the options and launches the flash kernel.
func (g *GPU) attention(p attnOperands, heads int, o GPUAttentionOpts) error {
	b, lq, lk, c := p.b, p.lq, p.lk, p.c
	if heads <= 0 || c%heads != 0 {
		return fmt.Errorf("nn: cuda Attention: %d channels in %d heads", c, heads)
	}
	if p.out.Numel() != b*lq*c {
		return fmt.Errorf("nn: cuda Attention: out %v for [%d, %d, %d]", p.out.Shape, b, lq, c)
	}
	d := c / heads
	if d > attnMaxHeadDim {
		return fmt.Errorf("nn: cuda Attention: head dim %d > %d", d, attnMaxHeadDim)
	}
	dt, err := opDType("Attention", p.out, p.q, p.k, p.v, o.Bias, o.KeyMask)
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
	kb, err := p.k.offset(p.koff, p.k.Numel()-p.koff)
	if err != nil {
		return err
	}
	vb, err := p.v.offset(p.voff, p.v.Numel()-p.voff)
	if err != nil {
		return err
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
	args := []any{p.q.Buf, kb, vb, p.out.Buf, bufOf(o.Bias), bufOf(o.KeyMask), heads, lq, lk, d, p.sq, p.sk, p.sv, c,
		scale, causal, biasB, biasH}
	block := cuda.Dim3{X: 128}
	if d > attnTiledMaxHeadDim {
		if dt == GPUF16 && !attnForceSIMT {
			dp := paddedDim(d, attnWideDims)
			grid := cuda.Dim3{X: uint32((lq + 15) / 16), Y: uint32(heads), Z: uint32(b)}
			return g.launchBlock("attention.cu", fmt.Sprintf("flash_attn_f16_wide_d%d", dp), grid, cuda.Dim3{X: uint32(dp / 64 * 32)}, 0, args...)
		}
		grid := cuda.Dim3{X: uint32((lq + 3) / 4), Y: uint32(heads), Z: uint32(b)}
		return g.launchBlock("attention.cu", dt.kernel("flash_attn_wide_simt"), grid, block, 0, args...)
	}
	if dt == GPUF16 && !attnForceSIMT {
		dp := paddedDim(d, attnMMADims)
		grid := cuda.Dim3{X: uint32((lq + 63) / 64), Y: uint32(heads), Z: uint32(b)}
		return g.launchBlock("attention.cu", fmt.Sprintf("flash_attn_f16_d%d", dp), grid, block, 0, args...)
	}
	grid := cuda.Dim3{X: uint32((lq + 7) / 8), Y: uint32(heads), Z: uint32(b)}
	shmem := (8 + 2*32) * (d + 1) * 4 // Q rows, K and V tiles as fp32
	return g.launchBlock("attention.cu", dt.kernel("flash_attn_simt"), grid, block, shmem, args...)
}
