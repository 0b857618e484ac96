// t5_position.go builds T5's attention bias: the learned relative position
// bias (bidirectional log buckets; stored in block 0 and shared by every
// layer) plus the key padding mask. It does not cover the decoder's
// unidirectional buckets.
package models

import (
	"math"

	"github.com/sdbridge/sdbridge/nn"
)

// t5MaskBias is torch.finfo(torch.float32).min, the bias HF adds for masked
// keys (finite, so a fully masked row still softmaxes without NaN).
const t5MaskBias = -math.MaxFloat32

// RelativePositionBucket maps r = key_pos - query_pos to a bucket as HF's
// T5Attention._relative_position_bucket does with bidirectional=True: half
// the buckets for r > 0; within a half, |r| < n/2 (n = numBuckets/2) gets its
// own bucket and larger distances share log-spaced buckets up to maxDistance,
// beyond which they saturate. For 32 buckets and distance 128:
// |r| 0-7 → 0-7, 8-11 → 8, 12-15 → 9, 16-22 → 10, 23-31 → 11, 32-45 → 12,
// 46-63 → 13, 64-90 → 14, ≥91 → 15 (plus 16 when r > 0).
func RelativePositionBucket(r, numBuckets, maxDistance int) int {
	half := numBuckets / 2
	bucket := 0
	if r > 0 {
		bucket = half
	}
	n := r
	if n < 0 {
		n = -n
	}
	maxExact := half / 2
	if n < maxExact {
		return bucket + n
	}
	// max_exact + log(n/max_exact)/log(max_distance/max_exact)*(half-max_exact),
	// truncated. The bucket edges fall on exact powers (16 → exactly 2.0), where
	// rounding in the logs could land just below the integer; the small
	// epsilon keeps the real-number result that the reference tables show.
	v := math.Log(float64(n)/float64(maxExact)) / math.Log(float64(maxDistance)/float64(maxExact)) * float64(half-maxExact)
	large := maxExact + int(math.Floor(v+1e-9))
	return bucket + min(large, half-1)
}

// T5RelativeBias is the learned per-head bias of each relative-position
// bucket, stored only in block 0 and reused by every layer.
type T5RelativeBias struct {
	Table       *nn.Tensor // [NumBuckets, H] "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
	NumBuckets  int
	MaxDistance int
	FP16        bool // round the combined bias to fp16 (mask bias becomes fp16's min)
}

// Forward returns the bias for n queries and keys, with the key mask of each
// batch row folded in: [1, H, n, n] when mask is nil, else [B, H, n, n] with
// masked keys (mask[b][j] false) at float32's min (fp16's in FP16 mode).
func (p *T5RelativeBias) Forward(n int, mask [][]bool) *nn.Tensor {
	heads := p.Table.Dim(1)
	buckets := make([]int, 2*n-1) // bucket of r = j - i, indexed by r + n - 1
	for r := -(n - 1); r <= n-1; r++ {
		buckets[r+n-1] = RelativePositionBucket(r, p.NumBuckets, p.MaxDistance)
	}
	rows := max(len(mask), 1)
	out := nn.New(rows, heads, n, n) // [B or 1, H, n, n]
	maskBias := float32(t5MaskBias)
	if p.FP16 {
		maskBias = -f16Max
	}
	for b := range rows {
		for h := range heads {
			plane := out.Data[(b*heads+h)*n*n : (b*heads+h+1)*n*n] // [n, n]
			for i := range n {
				for j := range n {
					v := p.Table.Data[buckets[j-i+n-1]*heads+h]
					if mask != nil && !mask[b][j] {
						v += maskBias // position_bias + (1 - mask) * finfo.min
					}
					plane[i*n+j] = v
				}
			}
		}
	}
	if p.FP16 {
		roundTensorF16(out)
	}
	return out
}
