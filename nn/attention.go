// attention.go: scaled dot-product attention computed per (batch, head) in
// blocks of query rows, so the score matrix held at once is [block, Lk]
// per worker rather than [heads, Lq, Lk]: scores = Q_blk K^T (GEMM),
// + bias, row softmax, out_blk = P V (GEMM). Q, K, V and the output stay in
// their [B, L, heads*d] layout; the GEMMs read heads through row strides.
// It does not implement causal masking (pass it in Bias) or dropout.
package nn

import "math"

// AttentionOpts modifies ScaledDotProductAttention.
type AttentionOpts struct {
	// Scale multiplies q·k; 0 means 1/sqrt(head_dim). T5 uses 1 (set NoScale).
	Scale   float32
	NoScale bool
	// Bias is added to the scores: [1 or B, heads (or 1), Lq, Lk] (T5
	// position bias plus mask), or nil.
	Bias *Tensor
}

// attnBlock is the number of query rows per task (at most attnBlockMax;
// a variable so a benchmark can sweep it).
var attnBlock = 256

const attnBlockMax = 256

// ScaledDotProductAttention computes softmax(q k^T * scale + bias) v per head.
// q [B, Lq, heads*d], k and v [B, Lk, heads*d]; returns [B, Lq, heads*d].
func ScaledDotProductAttention(q, k, v *Tensor, heads int, opt AttentionOpts) *Tensor {
	mustf(len(q.Shape) == 3 && len(k.Shape) == 3 && heads > 0 && q.Shape[2]%heads == 0, "ScaledDotProductAttention", "q %v, %d heads", q.Shape, heads)
	mustSameShape("ScaledDotProductAttention (k, v)", k, v)
	mustf(k.Shape[0] == q.Shape[0] && k.Shape[2] == q.Shape[2], "ScaledDotProductAttention", "q %v, k %v", q.Shape, k.Shape)
	b, lq, c := q.Shape[0], q.Shape[1], q.Shape[2]
	lk := k.Shape[1]
	d := c / heads
	scale := opt.Scale
	if scale == 0 {
		scale = float32(1 / math.Sqrt(float64(d)))
	}
	if opt.NoScale {
		scale = 1
	}
	out := New(b, lq, c) // [B, Lq, C]
	if b == 0 || lq == 0 || lk == 0 || d == 0 {
		return out // nothing to attend to: zeros, as an empty sum
	}
	bq := min(attnBlock, attnBlockMax, lq)
	nblk := (lq + bq - 1) / bq
	var bias []float32
	biasB, biasH := 0, 0
	if opt.Bias != nil {
		bs := opt.Bias.Shape
		mustf(len(bs) == 4 && (bs[0] == 1 || bs[0] == b) && (bs[1] == 1 || bs[1] == heads) && bs[2] == lq && bs[3] == lk,
			"ScaledDotProductAttention", "bias %v for [%d, %d, %d, %d] scores", bs, b, heads, lq, lk)
		bias = opt.Bias.Data
		biasB, biasH = bs[0], bs[1]
	}
	task := func(t int) {
		n, h, blk := t/(heads*nblk), t/nblk%heads, t%nblk
		i0 := blk * bq
		rows := min(bq, lq-i0)
		sp := getScratch(bq * lk)
		defer putScratch(sp)
		scores := (*sp)[:rows*lk] // [rows, Lk]
		qo := (n*lq+i0)*c + h*d
		ko := n*lk*c + h*d
		gemmSerial(false, true, rows, lk, d, scale, q.Data[qo:], c, k.Data[ko:], c, 0, scores, lk)
		if bias != nil {
			bn, bh := n, h
			if biasB == 1 {
				bn = 0
			}
			if biasH == 1 {
				bh = 0
			}
			bo := ((bn*biasH+bh)*lq + i0) * lk
			bs := bias[bo : bo+rows*lk]
			for i := range scores {
				scores[i] += bs[i]
			}
		}
		// Unnormalised softmax: exp(s - max) here, the 1/sum applied to
		// the d outputs of each row after P V (d values, not Lk).
		var inv [attnBlockMax]float32
		for r := 0; r < rows; r++ {
			inv[r] = softmaxRowUnnormalised(scores[r*lk : (r+1)*lk])
		}
		gemmSerial(false, false, rows, d, lk, 1, scores, lk, v.Data[ko:], c, 0, out.Data[qo:], c)
		for r := 0; r < rows; r++ {
			vecScale(out.Data[qo+r*c:qo+r*c+d], inv[r])
		}
	}
	ntask := b * heads * nblk
	parallelTasks(ntask, bq*lk*(2*d+actCost), task)
	return out
}
