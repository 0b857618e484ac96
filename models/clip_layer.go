// clip_layer.go is one layer of the CLIP text transformer (Hugging Face
// transformers CLIPEncoderLayer): pre-LayerNorm causal self-attention and a
// pre-LayerNorm MLP, each added back to the residual stream. It does not
// embed tokens or apply the final layer norm (clip.go does), and computes no
// attention-padding mask: SD pads with the end token and attends causally
// over everything, as the reference does.
package models

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// CLIPAttention is CLIPAttention: q/k/v/out projections with bias, heads of
// width hidden/heads, scale head_dim^-0.5, causal.
type CLIPAttention struct {
	Heads   int
	QProj   *nn.Linear // self_attn.q_proj [C, C] + [C]
	KProj   *nn.Linear // self_attn.k_proj
	VProj   *nn.Linear // self_attn.v_proj
	OutProj *nn.Linear // self_attn.out_proj
}

// Forward maps x [B, L, C] to [B, L, C]; causal is the additive mask
// [1, heads, L, L] (0 on and below the diagonal, a large negative above).
func (a *CLIPAttention) Forward(x, causal *nn.Tensor) *nn.Tensor {
	q := a.QProj.Forward(x) // [B, L, C]
	k := a.KProj.Forward(x) // [B, L, C]
	v := a.VProj.Forward(x) // [B, L, C]
	// transformers scales q by head_dim^-0.5 before q k^T: the default scale.
	o := nn.ScaledDotProductAttention(q, k, v, a.Heads, nn.AttentionOpts{Bias: causal}) // [B, L, C]
	return a.OutProj.Forward(o)                                                         // [B, L, C]
}

// CLIPMLP is fc1, the activation (hidden_act), fc2.
type CLIPMLP struct {
	FC1     *nn.Linear       // mlp.fc1 [I, C] + [I]
	Act     func(*nn.Tensor) // in place: quick_gelu for OpenAI CLIP
	ActName string           // the config's hidden_act naming Act (the GPU path picks its kernel by it)
	FC2     *nn.Linear       // mlp.fc2 [C, I] + [C]
}

// Forward maps x [B, L, C] to [B, L, C].
func (m *CLIPMLP) Forward(x *nn.Tensor) *nn.Tensor {
	h := m.FC1.Forward(x) // [B, L, I]
	m.Act(h)              // [B, L, I]
	return m.FC2.Forward(h)
}

// CLIPEncoderLayer is transformers' CLIPEncoderLayer.
type CLIPEncoderLayer struct {
	LayerNorm1 *nn.LayerNorm  // layer_norm1 [C]
	SelfAttn   *CLIPAttention // self_attn.*
	LayerNorm2 *nn.LayerNorm  // layer_norm2 [C]
	MLP        *CLIPMLP       // mlp.*
}

// clipActivations maps config hidden_act names to in-place activations.
var clipActivations = map[string]func(*nn.Tensor){
	"quick_gelu":        nn.QuickGELU,
	"gelu":              nn.GELU,
	"gelu_new":          nn.GELUTanh,
	"gelu_pytorch_tanh": nn.GELUTanh,
}

func loadCLIPEncoderLayer(w *Weights, cfg *CLIPTextConfig) *CLIPEncoderLayer {
	c, i := cfg.Hidden, cfg.Intermediate
	return &CLIPEncoderLayer{
		LayerNorm1: w.LayerNorm("layer_norm1", c, cfg.LayerNormEps),
		SelfAttn: &CLIPAttention{
			Heads:   cfg.Heads,
			QProj:   w.Linear("self_attn.q_proj", c, c, true),
			KProj:   w.Linear("self_attn.k_proj", c, c, true),
			VProj:   w.Linear("self_attn.v_proj", c, c, true),
			OutProj: w.Linear("self_attn.out_proj", c, c, true),
		},
		LayerNorm2: w.LayerNorm("layer_norm2", c, cfg.LayerNormEps),
		MLP: &CLIPMLP{
			FC1:     w.Linear("mlp.fc1", c, i, true),
			Act:     clipActivations[cfg.HiddenAct],
			ActName: cfg.HiddenAct,
			FC2:     w.Linear("mlp.fc2", i, c, true),
		},
	}
}

// Forward maps the residual stream x [B, L, C] to [B, L, C].
func (l *CLIPEncoderLayer) Forward(x, causal *nn.Tensor) *nn.Tensor {
	h := l.LayerNorm1.Forward(x)      // [B, L, C]
	h = l.SelfAttn.Forward(h, causal) // [B, L, C]
	nn.AddInPlace(h, x)               // [B, L, C]: residual + attn
	x = h                             // [B, L, C]
	h = l.LayerNorm2.Forward(x)       // [B, L, C]
	h = l.MLP.Forward(h)              // [B, L, C]
	nn.AddInPlace(h, x)               // [B, L, C]: residual + mlp
	return h
}

// clipCausalBias is the additive causal mask [1, heads, L, L]: 0 where key
// j <= query i, else a large negative (transformers uses finfo.min; any
// value whose exp underflows to 0 gives the same softmax).
func clipCausalBias(heads, l int) *nn.Tensor {
	m := nn.New(1, heads, l, l) // [1, H, L, L]
	for h := 0; h < heads; h++ {
		for i := 0; i < l; i++ {
			row := m.Data[(h*l+i)*l : (h*l+i+1)*l]
			for j := i + 1; j < l; j++ {
				row[j] = -1e30
			}
		}
	}
	return m
}

// checkCLIPAct reports an unknown hidden_act by name.
func checkCLIPAct(name string) error {
	if _, ok := clipActivations[name]; !ok {
		return fmt.Errorf("clip: unknown hidden_act %q (want quick_gelu, gelu, gelu_new or gelu_pytorch_tanh)", name)
	}
	return nil
}
