// vae_blocks.go holds the building blocks of the SD VAE (ldm
// `ldm/modules/diffusionmodules/model.py`): ResnetBlock, the single-head
// AttnBlock, Downsample (asymmetric pad then stride-2 conv) and Upsample
// (nearest 2x then conv). Each is a struct of weights plus Forward, bound by
// its ldm key. It does not hold the encoder/decoder wiring (vae_encoder.go,
// vae_decoder.go) nor any kernel: the arithmetic is nn's.
package models

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// vaeGroups and vaeEps are the VAE's GroupNorm settings everywhere
// (ldm Normalize: GroupNorm(32, C, eps=1e-6, affine=True)).
const (
	vaeGroups = 32
	vaeEps    = 1e-6
)

// VAEResnetBlock is ldm's ResnetBlock without the time embedding
// (temb_channels=0 in the autoencoder) and without dropout (inference).
type VAEResnetBlock struct {
	Norm1       *nn.GroupNorm // <key>.norm1 [in]
	Conv1       *nn.Conv2d    // <key>.conv1 [out, in, 3, 3]
	Norm2       *nn.GroupNorm // <key>.norm2 [out]
	Conv2       *nn.Conv2d    // <key>.conv2 [out, out, 3, 3]
	NinShortcut *nn.Conv2d    // <key>.nin_shortcut [out, in, 1, 1] when in != out, else nil
}

func loadVAEResnetBlock(w *Weights, key string, in, out int) *VAEResnetBlock {
	b := &VAEResnetBlock{
		Norm1: w.GroupNorm(key+".norm1", vaeGroups, in, vaeEps),
		Conv1: w.Conv2d(key+".conv1", in, out, 3, 1, 1),
		Norm2: w.GroupNorm(key+".norm2", vaeGroups, out, vaeEps),
		Conv2: w.Conv2d(key+".conv2", out, out, 3, 1, 1),
	}
	if in != out {
		// ldm uses a 3x3 conv_shortcut only with use_conv_shortcut=True,
		// which no SD autoencoder config sets.
		b.NinShortcut = w.Conv2d(key+".nin_shortcut", in, out, 1, 1, 0)
	}
	return b
}

// Forward maps x [B, in, H, W] to [B, out, H, W].
func (b *VAEResnetBlock) Forward(x *nn.Tensor) *nn.Tensor {
	h := b.Norm1.ForwardSiLU(x)     // [B, in, H, W]: silu(norm1(x))
	h = b.Conv1.Forward(h)          // [B, out, H, W]
	b.Norm2.ForwardInPlace(h, true) // [B, out, H, W]: silu(norm2(h)); dropout is identity
	h = b.Conv2.Forward(h)          // [B, out, H, W]
	if b.NinShortcut != nil {
		x = b.NinShortcut.Forward(x) // [B, out, H, W]
	}
	nn.AddInPlace(h, x) // [B, out, H, W]: x + h
	return h
}

// VAEAttnBlock is ldm's AttnBlock: one head of width C over the H*W
// positions, scale C^-0.5, with 1x1-conv projections. The 1x1 convs are
// applied as Linear layers on the token-major layout (identical maths).
type VAEAttnBlock struct {
	Norm    *nn.GroupNorm // <key>.norm [C]
	Q       *nn.Linear    // <key>.q [C, C, 1, 1] (or [C, C]), bias [C]
	K       *nn.Linear    // <key>.k
	V       *nn.Linear    // <key>.v
	ProjOut *nn.Linear    // <key>.proj_out
}

// vaeAttnNames lists, per role, the accepted sub-key spellings: the ldm name
// first, then the names that diffusers' VAE converters have left in
// single-file checkpoints (older `query/key/value/proj_attn`, newer
// `to_q/to_k/to_v/to_out.0` with 2-D Linear weights; diffusers
// scripts/convert_diffusers_to_original_stable_diffusion.py,
// vae_conversion_map_attn and vae_extra_conversion_map).
var vaeAttnNames = map[string][]string{
	"norm":     {"norm", "group_norm"},
	"q":        {"q", "to_q", "query"},
	"k":        {"k", "to_k", "key"},
	"v":        {"v", "to_v", "value"},
	"proj_out": {"proj_out", "to_out.0", "proj_attn"},
}

// vaeAttnKey returns the first spelling of role present under key (the ldm
// one when none is, so the missing-key error names the canonical key).
func vaeAttnKey(w *Weights, key, role string) string {
	for _, n := range vaeAttnNames[role] {
		if w.Has(key + "." + n + ".weight") {
			return key + "." + n
		}
	}
	return key + "." + role
}

// loadVAEAttnProj binds a 1x1 projection stored either as a conv weight
// [C, C, 1, 1] or as a Linear weight [C, C], as a Linear with weight [C, C].
func loadVAEAttnProj(w *Weights, key string, c int) *nn.Linear {
	var wt *nn.Tensor
	if len(w.Shape(key+".weight")) == 2 {
		wt = w.Tensor(key+".weight", c, c) // [C, C]
	} else {
		wt = w.Tensor(key+".weight", c, c, 1, 1) // [C, C, 1, 1]
		if wt != nil {
			wt = wt.Reshape(c, c) // [C, C]
		}
	}
	return &nn.Linear{Weight: wt, Bias: w.Tensor(key+".bias", c)}
}

func loadVAEAttnBlock(w *Weights, key string, c int) *VAEAttnBlock {
	return &VAEAttnBlock{
		Norm:    w.GroupNorm(vaeAttnKey(w, key, "norm"), vaeGroups, c, vaeEps),
		Q:       loadVAEAttnProj(w, vaeAttnKey(w, key, "q"), c),
		K:       loadVAEAttnProj(w, vaeAttnKey(w, key, "k"), c),
		V:       loadVAEAttnProj(w, vaeAttnKey(w, key, "v"), c),
		ProjOut: loadVAEAttnProj(w, vaeAttnKey(w, key, "proj_out"), c),
	}
}

// Forward maps x [B, C, H, W] to x + proj_out(attention(norm(x))).
func (a *VAEAttnBlock) Forward(x *nn.Tensor) *nn.Tensor {
	hgt, wid := x.Shape[2], x.Shape[3]
	h := a.Norm.Forward(x)  // [B, C, H, W]
	t := nn.ChannelsLast(h) // [B, HW, C]
	q := a.Q.Forward(t)     // [B, HW, C]
	k := a.K.Forward(t)     // [B, HW, C]
	v := a.V.Forward(t)     // [B, HW, C]
	// w_ = softmax(q^T k * C^-0.5); h_ = v w_^T: one head of width C, whose
	// default scale 1/sqrt(head_dim) is C^-0.5.
	o := nn.ScaledDotProductAttention(q, k, v, 1, nn.AttentionOpts{}) // [B, HW, C]
	o = a.ProjOut.Forward(o)                                          // [B, HW, C]
	out := nn.ChannelsFirst(o, hgt, wid)                              // [B, C, H, W]
	nn.AddInPlace(out, x)                                             // [B, C, H, W]
	return out
}

// VAEDownsample is ldm's Downsample with with_conv=True:
// F.pad(x, (0, 1, 0, 1)) then a 3x3 stride-2 conv with no padding. The pad
// is one zero column on the right and one zero row at the bottom, which a
// symmetric conv padding cannot express.
type VAEDownsample struct {
	Conv *nn.Conv2d // <key>.conv [C, C, 3, 3], stride 2, padding 0
}

func loadVAEDownsample(w *Weights, key string, c int) *VAEDownsample {
	return &VAEDownsample{Conv: w.Conv2d(key+".conv", c, c, 3, 2, 0)}
}

// Forward maps x [B, C, H, W] to [B, C, H/2, W/2] (floor for even H, W).
func (d *VAEDownsample) Forward(x *nn.Tensor) *nn.Tensor {
	p := vaePadRightBottom(x) // [B, C, H+1, W+1]
	return d.Conv.Forward(p)  // [B, C, (H-2)/2+1, (W-2)/2+1]
}

// vaePadRightBottom returns x [B, C, H, W] with one zero column appended on
// the right and one zero row at the bottom: [B, C, H+1, W+1]. A layout copy,
// not a kernel (nn has no asymmetric pad).
func vaePadRightBottom(x *nn.Tensor) *nn.Tensor {
	b, c, h, w := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	out := nn.New(b, c, h+1, w+1) // [B, C, H+1, W+1]
	for p := 0; p < b*c; p++ {
		for y := 0; y < h; y++ {
			copy(out.Data[(p*(h+1)+y)*(w+1):], x.Data[(p*h+y)*w:(p*h+y+1)*w])
		}
	}
	return out
}

// VAEUpsample is ldm's Upsample with with_conv=True: nearest 2x, then a 3x3
// conv with padding 1.
type VAEUpsample struct {
	Conv *nn.Conv2d // <key>.conv [C, C, 3, 3]
}

func loadVAEUpsample(w *Weights, key string, c int) *VAEUpsample {
	return &VAEUpsample{Conv: w.Conv2d(key+".conv", c, c, 3, 1, 1)}
}

// Forward maps x [B, C, H, W] to [B, C, 2H, 2W].
func (u *VAEUpsample) Forward(x *nn.Tensor) *nn.Tensor {
	h := nn.UpsampleNearest2x(x) // [B, C, 2H, 2W]
	return u.Conv.Forward(h)     // [B, C, 2H, 2W]
}

// checkVAEInput validates an image or latent tensor before a forward pass.
func checkVAEInput(what string, x *nn.Tensor, channels, multiple int) error {
	if x == nil || len(x.Shape) != 4 {
		return fmt.Errorf("vae: %s must be [B, %d, H, W], got %v", what, channels, x)
	}
	if x.Shape[1] != channels || x.Shape[0] < 1 || x.Shape[2] < 1 || x.Shape[3] < 1 {
		return fmt.Errorf("vae: %s has shape %v, want [B, %d, H, W]", what, x.Shape, channels)
	}
	if x.Shape[2]%multiple != 0 || x.Shape[3]%multiple != 0 {
		return fmt.Errorf("vae: %s size %dx%d is not a multiple of %d", what, x.Shape[2], x.Shape[3], multiple)
	}
	return nil
}

// VAEMid is the middle of the encoder and of the decoder: ResnetBlock,
// AttnBlock, ResnetBlock at the lowest resolution (ldm builds the attention
// here whatever attn_resolutions says).
type VAEMid struct {
	Block1 *VAEResnetBlock // <key>.block_1
	Attn1  *VAEAttnBlock   // <key>.attn_1
	Block2 *VAEResnetBlock // <key>.block_2
}

func loadVAEMid(w *Weights, key string, c int) *VAEMid {
	return &VAEMid{
		Block1: loadVAEResnetBlock(w, key+".block_1", c, c),
		Attn1:  loadVAEAttnBlock(w, key+".attn_1", c),
		Block2: loadVAEResnetBlock(w, key+".block_2", c, c),
	}
}

// Forward maps x [B, C, h, w] to [B, C, h, w].
func (m *VAEMid) Forward(x *nn.Tensor) *nn.Tensor {
	h := m.Block1.Forward(x) // [B, C, h, w]
	h = m.Attn1.Forward(h)   // [B, C, h, w]
	return m.Block2.Forward(h)
}
