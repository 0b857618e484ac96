// vae.go is the SD VAE (ldm AutoencoderKL, f=8): where its weights live in a
// file, its configuration inferred from tensor shapes, and the two entry
// points the pipeline uses, Decode (sampler latents -> image) and Encode
// (image -> scaled latent mean). It does not sample from the latent
// distribution (img2img uses the mean, as the golden reference does), does
// not tile large images, does not clamp or convert the image to bytes, and
// does not read diffusers-layout VAE folders (convert those at the edge).
package models

import (
	"errors"
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// DefaultVAEScaleFactor is SD 1.x's latent scale (v1-inference.yaml
// scale_factor). Checkpoints do not store it.
const DefaultVAEScaleFactor = 0.18215

// ErrNoVAE means the file holds no VAE weights (a checkpoint saved without
// first_stage_model.*); the CLI turns it into "use --vae FILE".
var ErrNoVAE = errors.New("no VAE weights (first_stage_model.*) in this file")

// VAEConfig is the autoencoder's configuration (ldm ddconfig names in
// comments). LoadVAE infers everything but ScaleFactor from shapes.
type VAEConfig struct {
	Ch           int     // ch: base width (128 in SD)
	ChMult       []int   // ch_mult: per-level width multipliers ([1, 2, 4, 4])
	NumResBlocks int     // num_res_blocks per encoder level; the decoder has one more
	AttnLevels   []bool  // per level: res blocks followed by attention (attn_resolutions; none in SD)
	ZChannels    int     // z_channels (4)
	EmbedDim     int     // embed_dim: channels between quant_conv and post_quant_conv (4)
	InChannels   int     // in_channels of the encoder (3)
	OutChannels  int     // out_ch of the decoder (3)
	ScaleFactor  float32 // latent scale; 0 means DefaultVAEScaleFactor
}

// Factor is the spatial downsampling factor, 2^(levels-1) (8 for SD).
func (c *VAEConfig) Factor() int { return 1 << (len(c.ChMult) - 1) }

// VAE is an AutoencoderKL. Encoder is nil when loaded with LoadVAEDecoder.
type VAE struct {
	Config        VAEConfig
	Encoder       *VAEEncoder // encoder.*
	QuantConv     *nn.Conv2d  // quant_conv [2*embed, 2*z, 1, 1]; nil without encoder
	PostQuantConv *nn.Conv2d  // post_quant_conv [z, embed, 1, 1]
	Decoder       *VAEDecoder // decoder.*
	Prefix        string      // the key prefix the weights were found under
}

// vaeLayouts are the key prefixes a VAE is found under, in order: inside a
// single-file checkpoint, then a standalone VAE file (vae-ft-mse-840000 and
// friends: the same names without the prefix; their loss.* keys are unused).
var vaeLayouts = []string{"first_stage_model.", ""}

// DetectVAEPrefix returns the prefix under which w holds an ldm-layout VAE.
// A file without one gives ErrNoVAE; a diffusers-layout VAE is refused by
// name.
func DetectVAEPrefix(w *Weights) (string, error) {
	for _, p := range vaeLayouts {
		if w.Has(p + "decoder.conv_in.weight") {
			if w.Has(p+"decoder.up_blocks.0.resnets.0.conv1.weight") || w.Has(p+"decoder.mid_block.resnets.0.conv1.weight") {
				return "", fmt.Errorf("vae: %sdecoder.* is in the diffusers layout (up_blocks/mid_block); convert it to the ldm single-file layout", w.Prefix()+p)
			}
			return p, nil
		}
	}
	return "", fmt.Errorf("vae: %w", ErrNoVAE)
}

// LoadVAE finds the VAE in w (a checkpoint or a standalone VAE file), infers
// its configuration and binds encoder and decoder. scaleFactor 0 means
// DefaultVAEScaleFactor.
func LoadVAE(w *Weights, scaleFactor float32) (*VAE, error) {
	return loadVAE(w, scaleFactor, true)
}

// LoadVAEDecoder is LoadVAE without the encoder (txt2img needs only the
// decoder; saves about 40% of the VAE's memory).
func LoadVAEDecoder(w *Weights, scaleFactor float32) (*VAE, error) {
	return loadVAE(w, scaleFactor, false)
}

func loadVAE(w *Weights, scaleFactor float32, withEncoder bool) (*VAE, error) {
	p, err := DetectVAEPrefix(w)
	if err != nil {
		return nil, err
	}
	vw := w.Sub(p)
	cfg, err := inferVAEConfig(vw, withEncoder)
	if err != nil {
		return nil, err
	}
	cfg.ScaleFactor = scaleFactor
	if cfg.ScaleFactor == 0 {
		cfg.ScaleFactor = DefaultVAEScaleFactor
	}
	v := &VAE{Config: cfg, Prefix: vw.Prefix()}
	if withEncoder {
		v.Encoder = loadVAEEncoder(vw.Sub("encoder."), &cfg)
		v.QuantConv = vw.Conv2d("quant_conv", 2*cfg.ZChannels, 2*cfg.EmbedDim, 1, 1, 0)
	}
	v.PostQuantConv = vw.Conv2d("post_quant_conv", cfg.EmbedDim, cfg.ZChannels, 1, 1, 0)
	v.Decoder = loadVAEDecoder(vw.Sub("decoder."), &cfg)
	if err := w.Err(); err != nil {
		return nil, fmt.Errorf("vae: %w", err)
	}
	return v, nil
}

// inferVAEConfig reads the configuration off the decoder's (and encoder's)
// shapes; the strict binding that follows checks every other tensor.
func inferVAEConfig(w *Weights, withEncoder bool) (VAEConfig, error) {
	var cfg VAEConfig
	shape := func(key string, rank int) ([]int, error) {
		s := w.Shape(key)
		if s == nil {
			return nil, fmt.Errorf("vae: missing tensor %q", w.Prefix()+key)
		}
		if len(s) != rank {
			return nil, fmt.Errorf("vae: tensor %q has shape %v, want rank %d", w.Prefix()+key, s, rank)
		}
		return s, nil
	}
	convOut, err := shape("decoder.conv_out.weight", 4) // [out_ch, ch, 3, 3]
	if err != nil {
		return cfg, err
	}
	cfg.OutChannels, cfg.Ch = convOut[0], convOut[1]
	convIn, err := shape("decoder.conv_in.weight", 4) // [C_last, z, 3, 3]
	if err != nil {
		return cfg, err
	}
	cfg.ZChannels = convIn[1]
	pq, err := shape("post_quant_conv.weight", 4) // [z, embed, 1, 1]
	if err != nil {
		return cfg, err
	}
	cfg.EmbedDim = pq[1]
	for lvl := 0; w.Has(fmt.Sprintf("decoder.up.%d.block.0.conv1.weight", lvl)); lvl++ {
		key := fmt.Sprintf("decoder.up.%d.block.0.conv2.weight", lvl) // [C_lvl, C_lvl, 3, 3]
		s, err := shape(key, 4)
		if err != nil {
			return cfg, err
		}
		if cfg.Ch <= 0 || s[0]%cfg.Ch != 0 {
			return cfg, fmt.Errorf("vae: tensor %q has %d channels, not a multiple of ch=%d", w.Prefix()+key, s[0], cfg.Ch)
		}
		cfg.ChMult = append(cfg.ChMult, s[0]/cfg.Ch)
		cfg.AttnLevels = append(cfg.AttnLevels, w.Has(fmt.Sprintf("decoder.up.%d.attn.0.norm.weight", lvl)))
	}
	if len(cfg.ChMult) == 0 {
		return cfg, fmt.Errorf("vae: missing tensor %q", w.Prefix()+"decoder.up.0.block.0.conv1.weight")
	}
	n := 0
	for w.Has(fmt.Sprintf("decoder.up.0.block.%d.conv1.weight", n)) {
		n++
	}
	cfg.NumResBlocks = n - 1
	cfg.InChannels = 3
	if withEncoder {
		s, err := shape("encoder.conv_in.weight", 4) // [ch, in, 3, 3]
		if err != nil {
			return cfg, err
		}
		cfg.InChannels = s[1]
	}
	for i, m := range cfg.ChMult {
		if c := m * cfg.Ch; c%vaeGroups != 0 {
			return cfg, fmt.Errorf("vae: level %d width %d is not divisible into %d groups", i, c, vaeGroups)
		}
	}
	if cfg.NumResBlocks < 1 {
		return cfg, fmt.Errorf("vae: decoder level 0 has %d res blocks, want at least 2", n)
	}
	return cfg, nil
}

// Decode maps sampler-space latents [B, z, h, w] to images [B, out, 8h, 8w]
// in about [-1, 1] (not clamped): decoder(post_quant_conv(latent / scale)).
// The input is not modified.
func (v *VAE) Decode(latent *nn.Tensor) (*nn.Tensor, error) {
	if err := checkVAEInput("latent", latent, v.Config.EmbedDim, 1); err != nil {
		return nil, err
	}
	z := latent.Clone()                 // [B, embed, h, w]
	nn.Scale(z, 1/v.Config.ScaleFactor) // [B, embed, h, w]
	z = v.PostQuantConv.Forward(z)      // [B, z, h, w]
	return v.Decoder.Forward(z), nil    // [B, out, 8h, 8w]
}

// Encode maps images [B, in, H, W] in [-1, 1] to the scaled mean of the
// latent distribution [B, embed, H/8, W/8] (what the sampler starts from in
// img2img): quant_conv(encoder(x))[:, :embed] * scale.
func (v *VAE) Encode(img *nn.Tensor) (*nn.Tensor, error) {
	if v.Encoder == nil {
		return nil, errors.New("vae: loaded without its encoder (LoadVAEDecoder)")
	}
	if err := checkVAEInput("image", img, v.Config.InChannels, v.Config.Factor()); err != nil {
		return nil, err
	}
	h := v.Encoder.Forward(img) // [B, 2z, H/8, W/8]
	m := v.QuantConv.Forward(h) // [B, 2*embed, H/8, W/8]: mean, logvar
	b, e := m.Shape[0], v.Config.EmbedDim
	hw := m.Shape[2] * m.Shape[3]
	mean := nn.New(b, e, m.Shape[2], m.Shape[3]) // [B, embed, H/8, W/8]
	for n := 0; n < b; n++ {
		copy(mean.Data[n*e*hw:(n+1)*e*hw], m.Data[n*2*e*hw:(n*2*e+e)*hw])
	}
	nn.Scale(mean, v.Config.ScaleFactor) // [B, embed, H/8, W/8]
	return mean, nil
}
