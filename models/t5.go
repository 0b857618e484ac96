// t5.go is the T5 v1.1 / FLAN-T5 encoder (the text encoder ELLA uses): it
// loads a Hugging Face folder (config.json plus model.safetensors or a
// sharded model.safetensors.index.json; any per-tensor dtype, e.g. fp16 with
// fp32 `wo`) and maps token ids to last_hidden_state. Computation is float32
// by default; T5Options.EmulateFP16 rounds as an all-fp16 PyTorch model does.
// It does not tokenize (see tokenizer/) and does not load the decoder.
package models

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// T5Options tunes how an encoder is bound.
type T5Options struct {
	// EmulateFP16 rounds weights (`wo` included) and activations to fp16
	// where an all-fp16 PyTorch T5 stores them, with HF's clamp (spec §7).
	EmulateFP16 bool
	// Alloc, when set, provides the memory of the float32 weights.
	Alloc func(n int) []float32
}

// T5Encoder is the encoder stack of a T5 v1.1 model.
type T5Encoder struct {
	Config  T5Config
	Embed   *nn.Tensor // [V, D] "shared.weight" (or "encoder.embed_tokens.weight"); no sqrt(D) scale
	RelBias T5RelativeBias
	Blocks  []T5Block
	Final   T5RMSNorm // "encoder.final_layer_norm.weight"
}

// LoadT5Encoder loads the encoder of the Hugging Face T5 folder dir.
func LoadT5Encoder(dir string) (*T5Encoder, error) {
	return LoadT5EncoderWith(dir, T5Options{})
}

// LoadT5EncoderWith is LoadT5Encoder with options.
func LoadT5EncoderWith(dir string, opt T5Options) (*T5Encoder, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("t5: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("t5: %s is not a folder (want a Hugging Face T5 folder with config.json and model.safetensors)", dir)
	}
	cfg, err := ReadT5Config(dir)
	if err != nil {
		return nil, err
	}
	src, closer, err := openT5Weights(dir)
	if err != nil {
		return nil, err
	}
	defer closer.Close() // weights are copied into float32 at bind time
	w := NewWeights(src)
	if opt.Alloc != nil {
		w.SetAlloc(opt.Alloc)
	}
	return NewT5Encoder(w, cfg, opt)
}

// t5Source is a weight source that must be closed.
type t5Source interface {
	Source
	io.Closer
}

// openT5Weights opens dir/model.safetensors, else the sharded index.
func openT5Weights(dir string) (Source, io.Closer, error) {
	single := filepath.Join(dir, "model.safetensors")
	index := filepath.Join(dir, "model.safetensors.index.json")
	var src t5Source
	var err error
	switch {
	case exists(single):
		src, err = safetensors.Open(single)
	case exists(index):
		src, err = safetensors.OpenIndex(index)
	default:
		hint := ""
		if exists(filepath.Join(dir, "pytorch_model.bin")) {
			hint = " (pytorch_model.bin is a pickle and is not loaded; convert it to safetensors)"
		}
		return nil, nil, fmt.Errorf("t5: %s has no model.safetensors or model.safetensors.index.json%s", dir, hint)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("t5: %w", err)
	}
	return src, src, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// t5EmbedKeys are the names the token embedding is saved under, in order of
// preference (T5EncoderModel saves "shared.weight"; the tied copy
// "encoder.embed_tokens.weight" appears in some exports).
var t5EmbedKeys = []string{"shared.weight", "encoder.embed_tokens.weight", "embed_tokens.weight"}

// NewT5Encoder binds an encoder from w (keys with or without the "encoder."
// prefix; decoder and lm_head tensors are ignored) for the given config.
func NewT5Encoder(w *Weights, cfg T5Config, opt T5Options) (*T5Encoder, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("t5: %w", err)
	}
	const probe = "block.0.layer.0.SelfAttention.q.weight"
	var enc *Weights
	switch {
	case w.Has("encoder." + probe):
		enc = w.Sub("encoder.")
	case w.Has(probe):
		enc = w
	default:
		return nil, fmt.Errorf("t5: no tensor %q: not a T5 encoder checkpoint", w.Prefix()+"encoder."+probe)
	}
	e := &T5Encoder{Config: cfg}
	d, inner, eps := cfg.DModel, cfg.NumHeads*cfg.DKV, float32(cfg.LayerNormEps)
	fp16 := opt.EmulateFP16

	embedKey := ""
	for _, k := range t5EmbedKeys {
		if w.Has(k) {
			embedKey = k
			break
		}
	}
	if embedKey == "" {
		return nil, fmt.Errorf("t5: no token embedding: want one of %v", prefixed(w.Prefix(), t5EmbedKeys))
	}
	if s := w.Shape(embedKey); len(s) != 2 || s[1] != d || s[0] < 2 {
		return nil, fmt.Errorf("t5: tensor %q has shape %v, want [vocab, %d]", w.Prefix()+embedKey, s, d)
	}
	e.Embed = w.Tensor(embedKey) // [V, D]

	gated, act, _ := cfg.feedForward()
	wiGated := enc.Has("block.0.layer.1.DenseReluDense.wi_0.weight")
	if wiGated && !gated && act == "gelu" {
		act = "gelu_new" // spec §4.1: some FLAN configs say "gelu" for the gated-gelu weights
	}
	gated = wiGated // the weights decide; the official loaders would not load otherwise

	e.RelBias = T5RelativeBias{
		Table:       enc.Tensor("block.0.layer.0.SelfAttention.relative_attention_bias.weight", cfg.NumBuckets, cfg.NumHeads), // [NB, H]
		NumBuckets:  cfg.NumBuckets,
		MaxDistance: cfg.MaxDistance,
		FP16:        fp16,
	}
	e.Blocks = make([]T5Block, cfg.NumLayers)
	for i := range e.Blocks {
		b := enc.Sub("block." + strconv.Itoa(i) + ".layer.")
		ff := T5FeedForward{Act: t5Activations[act], ActName: act, FP16: fp16}
		if gated {
			ff.Wi0 = b.Linear("1.DenseReluDense.wi_0", d, cfg.DFF, false)
			ff.Wi1 = b.Linear("1.DenseReluDense.wi_1", d, cfg.DFF, false)
		} else {
			ff.Wi0 = b.Linear("1.DenseReluDense.wi", d, cfg.DFF, false)
		}
		ff.Wo = b.Linear("1.DenseReluDense.wo", cfg.DFF, d, false)
		e.Blocks[i] = T5Block{
			AttnNorm: T5RMSNorm{Weight: b.Tensor("0.layer_norm.weight", d), Eps: eps, FP16: fp16},
			Attn: T5Attention{
				Q:     b.Linear("0.SelfAttention.q", d, inner, false),
				K:     b.Linear("0.SelfAttention.k", d, inner, false),
				V:     b.Linear("0.SelfAttention.v", d, inner, false),
				O:     b.Linear("0.SelfAttention.o", inner, d, false),
				Heads: cfg.NumHeads,
				FP16:  fp16,
			},
			FFNorm: T5RMSNorm{Weight: b.Tensor("1.layer_norm.weight", d), Eps: eps, FP16: fp16},
			FF:     ff,
			FP16:   fp16,
		}
	}
	e.Final = T5RMSNorm{Weight: enc.Tensor("final_layer_norm.weight", d), Eps: eps, FP16: fp16}
	if err := w.Err(); err != nil {
		return nil, fmt.Errorf("t5: %w", err)
	}
	// Tensors of the encoder stack nobody bound mean the config and the file
	// disagree (more layers, a bias per layer as in UMT5, ...).
	for _, k := range enc.Unused() {
		if strings.HasPrefix(k, enc.Prefix()+"block.") || strings.HasPrefix(k, enc.Prefix()+"final_layer_norm") {
			return nil, fmt.Errorf("t5: unexpected tensor %q (config.json says %d layers with the position bias in block 0 only)", k, cfg.NumLayers)
		}
	}
	if fp16 {
		e.roundWeightsF16()
	}
	return e, nil
}

func prefixed(p string, keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = p + k
	}
	return out
}

// roundWeightsF16 casts every weight to fp16 (`.to(torch.float16)`, which
// also rounds the fp32-kept `wo`).
func (e *T5Encoder) roundWeightsF16() {
	ts := []*nn.Tensor{e.Embed, e.RelBias.Table, e.Final.Weight}
	for i := range e.Blocks {
		b := &e.Blocks[i]
		ts = append(ts, b.AttnNorm.Weight, b.Attn.Q.Weight, b.Attn.K.Weight, b.Attn.V.Weight, b.Attn.O.Weight,
			b.FFNorm.Weight, b.FF.Wi0.Weight, b.FF.Wo.Weight)
		if b.FF.Wi1 != nil {
			ts = append(ts, b.FF.Wi1.Weight)
		}
	}
	for _, t := range ts {
		roundTensorF16(t)
	}
}

// DModel is the width of the encoder's output (ELLA's input_dim).
func (e *T5Encoder) DModel() int { return e.Config.DModel }

// VocabSize is the number of embedding rows.
func (e *T5Encoder) VocabSize() int { return e.Embed.Dim(0) }

// ErrT5Input marks ids or masks Encode cannot run.
var ErrT5Input = errors.New("t5: bad input")

// Encode maps token ids [B][L] (every row the same length L >= 1) to
// last_hidden_state [B, L, D]. mask [B][L] marks real tokens (nil: all
// real); masked positions are ignored as keys but their rows are still
// computed, as in HF.
func (e *T5Encoder) Encode(ids [][]int, mask [][]bool) (*nn.Tensor, error) {
	if len(ids) == 0 || len(ids[0]) == 0 {
		return nil, fmt.Errorf("%w: no tokens (append EOS = 1 to every prompt)", ErrT5Input)
	}
	bsz, n, d, vocab := len(ids), len(ids[0]), e.Config.DModel, e.VocabSize()
	if mask != nil && len(mask) != bsz {
		return nil, fmt.Errorf("%w: mask has %d rows, ids %d", ErrT5Input, len(mask), bsz)
	}
	h := nn.New(bsz, n, d) // [B, L, D]
	for b, row := range ids {
		if len(row) != n {
			return nil, fmt.Errorf("%w: row %d has %d ids, row 0 has %d (pad to one length and pass a mask)", ErrT5Input, b, len(row), n)
		}
		if mask != nil && len(mask[b]) != n {
			return nil, fmt.Errorf("%w: mask row %d has %d entries, want %d", ErrT5Input, b, len(mask[b]), n)
		}
		for i, id := range row {
			if id < 0 || id >= vocab {
				return nil, fmt.Errorf("%w: id %d at [%d,%d] outside the vocabulary [0,%d)", ErrT5Input, id, b, i, vocab)
			}
			copy(h.Data[(b*n+i)*d:(b*n+i+1)*d], e.Embed.Data[id*d:(id+1)*d]) // shared[ids]
		}
	}
	bias := e.RelBias.Forward(n, mask) // [1 or B, H, L, L], computed once, reused by every block
	for i := range e.Blocks {
		h = e.Blocks[i].Forward(h, bias) // [B, L, D]
	}
	return e.Final.Forward(h), nil // [B, L, D]
}
