// t5_layers.go holds the layers of one T5 v1.1 encoder block (HF
// modeling_t5.py): T5LayerNorm (RMSNorm), self-attention without score
// scaling, the (gated) feed-forward, and the block that chains them with
// residuals. The position bias is built elsewhere (t5_position.go) and passed
// in. It does not implement the decoder, cross-attention or caching.
package models

import (
	"math"

	"github.com/sdbridge/sdbridge/nn"
)

// t5Activations are the feed-forward activations HF T5 configs name.
var t5Activations = map[string]func(*nn.Tensor){
	"relu":     relu,
	"gelu":     nn.GELU,     // exact erf GELU
	"gelu_new": nn.GELUTanh, // 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3)))
	"silu":     nn.SiLU,
}

func relu(t *nn.Tensor) {
	for i, v := range t.Data {
		t.Data[i] = max(v, 0)
	}
}

// T5RMSNorm is T5LayerNorm: x * rsqrt(mean(x^2) + eps) * w, with no mean
// subtraction and no bias. The variance is accumulated in float64 and the
// scale applied in float32.
type T5RMSNorm struct {
	Weight *nn.Tensor // [D] "....layer_norm.weight" / "encoder.final_layer_norm.weight"
	Eps    float32
	FP16   bool // round as PyTorch fp16 does: after the normalisation and after the weight
}

// Forward normalises x [..., D] and returns a new tensor of the same shape.
func (n *T5RMSNorm) Forward(x *nn.Tensor) *nn.Tensor {
	d := x.Dim(-1)
	y := nn.New(x.Shape...) // [..., D]
	for r := 0; r < x.Numel()/d; r++ {
		row := x.Data[r*d : (r+1)*d]
		var ss float64
		for _, v := range row {
			ss += float64(v) * float64(v)
		}
		// variance = hidden_states.to(float32).pow(2).mean(-1, keepdim=True)
		inv := float32(1 / math.Sqrt(float64(float32(ss/float64(d)))+float64(n.Eps)))
		out := y.Data[r*d : (r+1)*d]
		for i, v := range row {
			h := v * inv // hidden_states * torch.rsqrt(variance + eps)
			if n.FP16 {
				h = roundF16(h) // hidden_states.to(self.weight.dtype)
			}
			out[i] = n.Weight.Data[i] * h
		}
	}
	if n.FP16 {
		roundTensorF16(y)
	}
	return y
}

// T5Attention is T5 self-attention: bias-free q, k, v, o projections, scores
// q·kᵀ with NO 1/sqrt(d_kv) scaling (Mesh-TF convention) plus the position
// bias (which carries the key mask), softmax, weighted sum of values.
type T5Attention struct {
	Q, K, V *nn.Linear // Weight [H*d_kv, D] "...SelfAttention.{q,k,v}.weight"
	O       *nn.Linear // Weight [D, H*d_kv] "...SelfAttention.o.weight"
	Heads   int
	FP16    bool // round each projection's output to fp16
}

// Forward maps x [B, L, D] with bias [1 or B, H, L, L] to [B, L, D].
func (a *T5Attention) Forward(x, bias *nn.Tensor) *nn.Tensor {
	q := a.fp16(a.Q.Forward(x)) // [B, L, H*d_kv]
	k := a.fp16(a.K.Forward(x)) // [B, L, H*d_kv]
	v := a.fp16(a.V.Forward(x)) // [B, L, H*d_kv]
	// scores = matmul(q, k^T) + position_bias_masked; softmax in float32
	o := nn.ScaledDotProductAttention(q, k, v, a.Heads, nn.AttentionOpts{NoScale: true, Bias: bias}) // [B, L, H*d_kv]
	return a.fp16(a.O.Forward(a.fp16(o)))                                                            // [B, L, D]
}

func (a *T5Attention) fp16(t *nn.Tensor) *nn.Tensor {
	if a.FP16 {
		roundTensorF16(t)
	}
	return t
}

// T5FeedForward is T5DenseGatedActDense (Wi1 set: act(wi_0 x) * (wi_1 x))
// or T5DenseActDense (Wi1 nil: act(wi x)), followed by wo.
type T5FeedForward struct {
	Wi0     *nn.Linear // Weight [F, D] "...DenseReluDense.wi_0.weight" (or ".wi.weight")
	Wi1     *nn.Linear // Weight [F, D] "...DenseReluDense.wi_1.weight"; nil when not gated
	Wo      *nn.Linear // Weight [D, F] "...DenseReluDense.wo.weight"
	Act     func(*nn.Tensor)
	ActName string // the config's activation naming Act (the GPU path picks its kernel by it)
	FP16    bool   // round after every Linear, the activation and the gate product
}

// Forward maps x [B, L, D] to [B, L, D].
func (f *T5FeedForward) Forward(x *nn.Tensor) *nn.Tensor {
	h := f.fp16(f.Wi0.Forward(x)) // [B, L, F]
	f.Act(h)                      // [B, L, F]
	f.fp16(h)
	if f.Wi1 != nil {
		lin := f.fp16(f.Wi1.Forward(x)) // [B, L, F]
		h = f.fp16(nn.Mul(h, lin))      // [B, L, F] hidden_gelu * hidden_linear
	}
	return f.fp16(f.Wo.Forward(h)) // [B, L, D]
}

func (f *T5FeedForward) fp16(t *nn.Tensor) *nn.Tensor {
	if f.FP16 {
		roundTensorF16(t)
	}
	return t
}

// T5Block is one encoder block: pre-norm self-attention and pre-norm
// feed-forward, each added to the residual stream without a gate.
type T5Block struct {
	AttnNorm T5RMSNorm // "layer.0.layer_norm"
	Attn     T5Attention
	FFNorm   T5RMSNorm // "layer.1.layer_norm"
	FF       T5FeedForward
	FP16     bool // round residual sums to fp16 and apply HF's fp16 clamp
}

// Forward maps h [B, L, D] with the shared position bias [1 or B, H, L, L]
// to the next hidden states [B, L, D]. h is not modified.
func (b *T5Block) Forward(h, bias *nn.Tensor) *nn.Tensor {
	a := b.Attn.Forward(b.AttnNorm.Forward(h), bias) // [B, L, D]
	h = nn.Add(h, a)                                 // [B, L, D]
	b.clamp(h)
	f := b.FF.Forward(b.FFNorm.Forward(h)) // [B, L, D]
	nn.AddInPlace(h, f)                    // [B, L, D]
	b.clamp(h)
	return h
}

// clamp rounds the residual stream to fp16 and applies modeling_t5.py's
// clamp: ±(65504-1000) when any element is infinite, else ±65504.
func (b *T5Block) clamp(h *nn.Tensor) {
	if b.FP16 {
		roundTensorF16(h)
		clampF16(h)
	}
}
