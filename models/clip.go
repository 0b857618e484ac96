// clip.go is the CLIP text encoder of SD 1.x (OpenAI ViT-L/14 text tower,
// transformers CLIPTextTransformer): where its weights live in a file, its
// configuration inferred from shapes, and Encode / EncodeSkip (clip skip).
// It does not tokenize (tokenizer/ does), does not weight or chunk prompts
// (A1111 syntax belongs to the pipeline), computes no pooled output or text
// projection (SD 1.x uses the token states), and ignores the stored
// position_ids (positions are always 0..L-1; merged files corrupt them).
package models

import (
	"errors"
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// ErrNoCLIPText means no CLIP text encoder was found in the file.
var ErrNoCLIPText = errors.New("no CLIP text encoder weights in this file")

// CLIPTextConfig is the text tower's configuration (transformers
// CLIPTextConfig names in comments).
type CLIPTextConfig struct {
	Vocab        int     // vocab_size (49408)
	Hidden       int     // hidden_size (768)
	Intermediate int     // intermediate_size (3072)
	Layers       int     // num_hidden_layers (12)
	Heads        int     // num_attention_heads (12)
	MaxPositions int     // max_position_embeddings (77)
	HiddenAct    string  // hidden_act ("quick_gelu")
	LayerNormEps float32 // layer_norm_eps (1e-5)
}

// CLIPTextOptions sets what shapes cannot tell; zero fields take the
// defaults of OpenAI CLIP.
type CLIPTextOptions struct {
	// Heads defaults to hidden/64: every released CLIP text tower uses
	// 64-wide heads (ViT-L/14: 768/64 = 12; OpenCLIP ViT-H: 1024/64 = 16),
	// and the golden tiny model (hidden 128, 2 heads) follows the same rule.
	Heads int
	// HiddenAct defaults to "quick_gelu" (OpenAI CLIP); OpenCLIP towers use "gelu".
	HiddenAct string
	// LayerNormEps defaults to 1e-5.
	LayerNormEps float32
}

// CLIPTextModel is the text transformer with its final layer norm.
type CLIPTextModel struct {
	Config            CLIPTextConfig
	TokenEmbedding    *nn.Tensor          // embeddings.token_embedding.weight [V, C]
	PositionEmbedding *nn.Tensor          // embeddings.position_embedding.weight [P, C]
	Layers            []*CLIPEncoderLayer // encoder.layers.N.*
	FinalLayerNorm    *nn.LayerNorm       // final_layer_norm [C]
	Prefix            string              // the key prefix the weights were found under
}

// clipLayouts are the prefixes a CLIP text tower is found under, in order:
// an SD 1.x single-file checkpoint; the same saved by old transformers
// versions without `text_model.` (A1111 checkpoint_dict_replacements_sd1
// inserts it); a Hugging Face / diffusers text_encoder file; bare keys.
var clipLayouts = []string{
	"cond_stage_model.transformer.text_model.",
	"cond_stage_model.transformer.",
	"text_model.",
	"",
}

// clipProbe is the key whose presence identifies a layout.
const clipProbe = "embeddings.token_embedding.weight"

// DetectCLIPTextPrefix returns the prefix under which w holds a CLIP text
// tower, ErrNoCLIPText when there is none, and a named refusal for an SDXL
// checkpoint (whose text encoders live under conditioner.embedders.*).
func DetectCLIPTextPrefix(w *Weights) (string, error) {
	for _, p := range clipLayouts {
		if w.Has(p + clipProbe) {
			return p, nil
		}
	}
	if w.Has("conditioner.embedders.0.transformer.text_model." + clipProbe) {
		return "", errors.New("clip: this is an SDXL checkpoint (conditioner.embedders.*); only SD 1.x is supported")
	}
	return "", fmt.Errorf("clip: %w (looked for %s under %q)", ErrNoCLIPText, clipProbe, clipLayouts)
}

// LoadCLIPText finds the text encoder in w, infers its configuration from
// shapes (heads, activation and eps from opt) and binds every tensor.
func LoadCLIPText(w *Weights, opt CLIPTextOptions) (*CLIPTextModel, error) {
	p, err := DetectCLIPTextPrefix(w)
	if err != nil {
		return nil, err
	}
	cw := w.Sub(p)
	cfg, err := inferCLIPTextConfig(cw, opt)
	if err != nil {
		return nil, err
	}
	m := &CLIPTextModel{
		Config:            cfg,
		TokenEmbedding:    cw.Tensor("embeddings.token_embedding.weight", cfg.Vocab, cfg.Hidden),
		PositionEmbedding: cw.Tensor("embeddings.position_embedding.weight", cfg.MaxPositions, cfg.Hidden),
		Prefix:            cw.Prefix(),
	}
	for i := 0; i < cfg.Layers; i++ {
		m.Layers = append(m.Layers, loadCLIPEncoderLayer(cw.Sub(fmt.Sprintf("encoder.layers.%d.", i)), &cfg))
	}
	m.FinalLayerNorm = cw.LayerNorm("final_layer_norm", cfg.Hidden, cfg.LayerNormEps)
	if err := w.Err(); err != nil {
		return nil, fmt.Errorf("clip: %w", err)
	}
	return m, nil
}

// inferCLIPTextConfig reads sizes off the embedding and layer shapes.
func inferCLIPTextConfig(w *Weights, opt CLIPTextOptions) (CLIPTextConfig, error) {
	cfg := CLIPTextConfig{Heads: opt.Heads, HiddenAct: opt.HiddenAct, LayerNormEps: opt.LayerNormEps}
	if cfg.HiddenAct == "" {
		cfg.HiddenAct = "quick_gelu"
	}
	if cfg.LayerNormEps == 0 {
		cfg.LayerNormEps = 1e-5
	}
	if err := checkCLIPAct(cfg.HiddenAct); err != nil {
		return cfg, err
	}
	shape2 := func(key string) ([]int, error) {
		s := w.Shape(key)
		if s == nil {
			return nil, fmt.Errorf("clip: missing tensor %q", w.Prefix()+key)
		}
		if len(s) != 2 || s[0] < 1 || s[1] < 1 {
			return nil, fmt.Errorf("clip: tensor %q has shape %v, want 2-D", w.Prefix()+key, s)
		}
		return s, nil
	}
	tok, err := shape2("embeddings.token_embedding.weight") // [V, C]
	if err != nil {
		return cfg, err
	}
	cfg.Vocab, cfg.Hidden = tok[0], tok[1]
	pos, err := shape2("embeddings.position_embedding.weight") // [P, C]
	if err != nil {
		return cfg, err
	}
	cfg.MaxPositions = pos[0]
	for w.Has(fmt.Sprintf("encoder.layers.%d.self_attn.q_proj.weight", cfg.Layers)) {
		cfg.Layers++
	}
	if cfg.Layers == 0 {
		return cfg, fmt.Errorf("clip: missing tensor %q", w.Prefix()+"encoder.layers.0.self_attn.q_proj.weight")
	}
	fc1, err := shape2("encoder.layers.0.mlp.fc1.weight") // [I, C]
	if err != nil {
		return cfg, err
	}
	cfg.Intermediate = fc1[0]
	if cfg.Heads == 0 {
		if cfg.Hidden%64 != 0 {
			return cfg, fmt.Errorf("clip: hidden size %d is not a multiple of 64; set CLIPTextOptions.Heads", cfg.Hidden)
		}
		cfg.Heads = cfg.Hidden / 64
	}
	if cfg.Heads < 1 || cfg.Hidden%cfg.Heads != 0 {
		return cfg, fmt.Errorf("clip: %d heads do not divide hidden size %d", cfg.Heads, cfg.Hidden)
	}
	return cfg, nil
}

// Encode returns the last hidden state after final_layer_norm [B, L, C] for
// token ids [B][L] (SD: L = 77, start token, prompt, end token padding).
func (m *CLIPTextModel) Encode(ids [][]int) (*nn.Tensor, error) {
	return m.EncodeSkip(ids, 1)
}

// EncodeSkip is Encode with clip skip: the output of the skip-th layer from
// the end, normalised by final_layer_norm (A1111 / ComfyUI semantics).
// skip 1 (or 0) is the last layer; skip 2 is
// final_layer_norm(hidden_states[-2]). Only the layers needed are computed.
// skip must be in 1..Layers.
func (m *CLIPTextModel) EncodeSkip(ids [][]int, skip int) (*nn.Tensor, error) {
	if skip == 0 {
		skip = 1
	}
	if skip < 1 || skip > m.Config.Layers {
		return nil, fmt.Errorf("clip: clip skip %d out of range 1..%d", skip, m.Config.Layers)
	}
	x, err := m.Embed(ids) // [B, L, C]
	if err != nil {
		return nil, err
	}
	causal := clipCausalBias(m.Config.Heads, x.Shape[1]) // [1, H, L, L]
	for _, l := range m.Layers[:m.Config.Layers-skip+1] {
		x = l.Forward(x, causal) // [B, L, C]
	}
	return m.FinalLayerNorm.Forward(x), nil // [B, L, C]
}

// Embed returns token plus position embeddings [B, L, C] for ids [B][L],
// with positions 0..L-1.
func (m *CLIPTextModel) Embed(ids [][]int) (*nn.Tensor, error) {
	b := len(ids)
	if b == 0 {
		return nil, errors.New("clip: no token sequences")
	}
	l, c := len(ids[0]), m.Config.Hidden
	if l < 1 || l > m.Config.MaxPositions {
		return nil, fmt.Errorf("clip: sequence length %d out of range 1..%d", l, m.Config.MaxPositions)
	}
	x := nn.New(b, l, c) // [B, L, C]
	for n, row := range ids {
		if len(row) != l {
			return nil, fmt.Errorf("clip: sequence %d has %d tokens, sequence 0 has %d", n, len(row), l)
		}
		for i, id := range row {
			if id < 0 || id >= m.Config.Vocab {
				return nil, fmt.Errorf("clip: token id %d at [%d][%d] outside the vocabulary (%d)", id, n, i, m.Config.Vocab)
			}
			dst := x.Data[(n*l+i)*c : (n*l+i+1)*c]
			tok := m.TokenEmbedding.Data[id*c : (id+1)*c]
			pos := m.PositionEmbedding.Data[i*c : (i+1)*c]
			for j := range dst {
				dst[j] = tok[j] + pos[j]
			}
		}
	}
	return x, nil
}
