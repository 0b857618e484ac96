// ella_block.go holds the layers of ELLA's connector (TencentQQGYLab/ELLA
// model.py): AdaLayerNorm (non-affine LayerNorm, eps 1e-6, modulated by the
// time condition, shift first), the packed torch MultiheadAttention, the
// squared-ReLU MLP, and the PerceiverAttentionBlock chaining them. It does
// not hold the connector's input/output plumbing (ella.go).
package models

import (
	"github.com/sdbridge/sdbridge/nn"
)

// ellaLNEps is the eps of every LayerNorm in the connector.
const ellaLNEps = 1e-6

// ELLAAdaLayerNorm is LN(x) * (1 + scale) + shift with
// (shift, scale) = chunk(linear(silu(temb)), 2).
type ELLAAdaLayerNorm struct {
	Linear *nn.Linear // Weight [2W, E] "...ln_{1,2,ff}.linear"
}

// Modulation maps the activated time condition s = silu(temb) [T, E] to
// [T, 2W]: shift in the first half, scale in the second.
func (n *ELLAAdaLayerNorm) Modulation(s *nn.Tensor) *nn.Tensor {
	return n.Linear.Forward(s) // [T, 2W]
}

// Forward normalises x [B, L, W] and modulates it with s [B or 1, E].
func (n *ELLAAdaLayerNorm) Forward(x, s *nn.Tensor) *nn.Tensor {
	return modulate(layerNorm(x), n.Modulation(s)) // [B, L, W]
}

// layerNorm is LayerNorm(W, elementwise_affine=False, eps=1e-6).
func layerNorm(x *nn.Tensor) *nn.Tensor {
	ln := nn.LayerNorm{Eps: ellaLNEps}
	return ln.Forward(x) // [B, L, W]
}

// modulate returns normed * (1 + scale) + shift for normed [Bn, L, W] and
// mod [Bm, 2W] (shift, scale); Bn and Bm are equal or one of them is 1 and is
// broadcast. The result is [max(Bn, Bm), L, W].
func modulate(normed, mod *nn.Tensor) *nn.Tensor {
	bn, l, w := normed.Dim(0), normed.Dim(1), normed.Dim(2)
	bm := mod.Dim(0)
	bo := max(bn, bm)
	out := nn.New(bo, l, w) // [Bo, L, W]
	for b := range bo {
		m := mod.Data[(b%bm)*2*w : (b%bm+1)*2*w] // [2W]
		shift, scale := m[:w], m[w:]             // emb.chunk(2, dim=-1): shift first
		src := normed.Data[(b%bn)*l*w : (b%bn+1)*l*w]
		dst := out.Data[b*l*w : (b+1)*l*w]
		for i := range l {
			for c := range w {
				dst[i*w+c] = src[i*w+c]*(1+scale[c]) + shift[c]
			}
		}
	}
	return out
}

// ELLAAttention is torch.nn.MultiheadAttention(W, H, batch_first=True): the
// packed in_proj_weight [3W, W] holds Wq, Wk, Wv as row blocks (views, not
// copies), scores scaled by 1/sqrt(W/H), no mask, then out_proj.
type ELLAAttention struct {
	Q, K, V *nn.Linear // views of "attn.in_proj_weight" [3W, W] / "attn.in_proj_bias" [3W]
	Out     *nn.Linear // Weight [W, W] "attn.out_proj"
	Heads   int
}

// Forward maps queries q [B, Lq, W] and keys/values kv [B, Lk, W] to
// [B, Lq, W].
func (a *ELLAAttention) Forward(q, kv *nn.Tensor) *nn.Tensor {
	qp := a.Q.Forward(q)                                                       // [B, Lq, W]
	kp := a.K.Forward(kv)                                                      // [B, Lk, W]
	vp := a.V.Forward(kv)                                                      // [B, Lk, W]
	o := nn.ScaledDotProductAttention(qp, kp, vp, a.Heads, nn.AttentionOpts{}) // [B, Lq, W], scale 1/sqrt(W/H)
	return a.Out.Forward(o)                                                    // [B, Lq, W]
}

// ELLAMLP is c_fc, squared ReLU, c_proj (W → 4W → W).
type ELLAMLP struct {
	FC   *nn.Linear // Weight [4W, W] "mlp.c_fc"
	Proj *nn.Linear // Weight [W, 4W] "mlp.c_proj"
}

// Forward maps x [B, L, W] to [B, L, W].
func (m *ELLAMLP) Forward(x *nn.Tensor) *nn.Tensor {
	h := m.FC.Forward(x) // [B, L, 4W]
	for i, v := range h.Data {
		v = max(v, 0)
		h.Data[i] = v * v // SquaredReLU: torch.square(torch.relu(x))
	}
	return m.Proj.Forward(h) // [B, L, W]
}

// ELLABlock is PerceiverAttentionBlock: the latents attend to themselves and
// the text, then pass the MLP; both steps are residual and ungated.
type ELLABlock struct {
	LN1  ELLAAdaLayerNorm // "ln_1": latents before attention
	LN2  ELLAAdaLayerNorm // "ln_2": text before attention
	Attn ELLAAttention    // "attn"
	LNFF ELLAAdaLayerNorm // "ln_ff": latents before the MLP
	MLP  ELLAMLP          // "mlp"
}

// Forward updates the latents lat [B, Q, W] given the text already passed
// through proj_in and the non-affine LayerNorm, xNorm [B or 1, N, W]
// (LN(x) does not depend on t, so callers cache it per prompt), and the
// activated time condition s [B, E]. It returns the new latents [B, Q, W].
func (b *ELLABlock) Forward(xNorm, lat, s *nn.Tensor) *nn.Tensor {
	nl := b.LN1.Forward(lat, s)                               // [B, Q, W] normed_latents = ln_1(latents, temb)
	nx := modulate(xNorm, b.LN2.Modulation(s))                // [B, N, W] ln_2(x, temb)
	kv := nn.Concat(1, nl, nx)                                // [B, Q+N, W] torch.cat([normed_latents, ln_2(x)], dim=1)
	lat = nn.Add(lat, b.Attn.Forward(nl, kv))                 // [B, Q, W]
	nn.AddInPlace(lat, b.MLP.Forward(b.LNFF.Forward(lat, s))) // [B, Q, W]
	return lat
}
