// t5_config.go reads the Hugging Face config.json of a T5 encoder (T5 v1.1 /
// FLAN-T5 / mT5) into T5Config and refuses folders that hold some other
// encoder (BERT, CLIP, UMT5, ...). It does not read weights or tokenizers.
package models

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// T5Config holds the encoder hyperparameters (HF `T5Config` names).
type T5Config struct {
	DModel          int     `json:"d_model"`
	DKV             int     `json:"d_kv"`
	DFF             int     `json:"d_ff"`
	NumHeads        int     `json:"num_heads"`
	NumLayers       int     `json:"num_layers"`
	VocabSize       int     `json:"vocab_size"`
	NumBuckets      int     `json:"relative_attention_num_buckets"`
	MaxDistance     int     `json:"relative_attention_max_distance"`
	FeedForwardProj string  `json:"feed_forward_proj"`
	LayerNormEps    float64 `json:"layer_norm_epsilon"`

	ModelType     string   `json:"model_type"`
	Architectures []string `json:"architectures"`
}

// t5ModelTypes are the config model_type values with the T5 v1.1 encoder
// layout (position bias in block 0 only). UMT5 keeps a bias per layer and is
// refused.
var t5ModelTypes = []string{"t5", "mt5"}

// ReadT5Config reads dir/config.json, fills HF defaults for absent fields and
// validates it.
func ReadT5Config(dir string) (T5Config, error) {
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return T5Config{}, fmt.Errorf("t5: %s needs a config.json: %w", dir, err)
	}
	return ParseT5Config(b, path)
}

// ParseT5Config decodes config.json bytes (path is only used in errors).
func ParseT5Config(b []byte, path string) (T5Config, error) {
	// HF defaults (configuration_t5.py) for fields a config may omit.
	cfg := T5Config{
		DModel: 512, DKV: 64, DFF: 2048, NumHeads: 8, NumLayers: 6, VocabSize: 32128,
		NumBuckets: 32, MaxDistance: 128, FeedForwardProj: "relu", LayerNormEps: 1e-6,
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return T5Config{}, fmt.Errorf("t5: %s: %w", path, err)
	}
	if err := cfg.validate(); err != nil {
		return T5Config{}, fmt.Errorf("t5: %s: %w", path, err)
	}
	return cfg, nil
}

func (c T5Config) validate() error {
	if c.ModelType == "" {
		return fmt.Errorf("no model_type: not a Hugging Face T5 config")
	}
	if !slices.Contains(t5ModelTypes, c.ModelType) {
		return fmt.Errorf("model_type %q is not a T5 encoder (want one of %v)", c.ModelType, t5ModelTypes)
	}
	for _, a := range c.Architectures {
		if !strings.HasPrefix(a, "T5") && !strings.HasPrefix(a, "MT5") {
			return fmt.Errorf("architecture %q is not a T5 model", a)
		}
	}
	for _, f := range []struct {
		name string
		v    int
	}{
		{"d_model", c.DModel}, {"d_kv", c.DKV}, {"d_ff", c.DFF}, {"num_heads", c.NumHeads},
		{"num_layers", c.NumLayers}, {"vocab_size", c.VocabSize},
		{"relative_attention_num_buckets", c.NumBuckets}, {"relative_attention_max_distance", c.MaxDistance},
	} {
		if f.v <= 0 {
			return fmt.Errorf("%s = %d must be positive", f.name, f.v)
		}
	}
	if c.NumBuckets%2 != 0 || c.NumBuckets < 4 {
		return fmt.Errorf("relative_attention_num_buckets = %d: want an even number >= 4", c.NumBuckets)
	}
	if c.MaxDistance <= c.NumBuckets/4 {
		return fmt.Errorf("relative_attention_max_distance = %d must exceed num_buckets/4 = %d", c.MaxDistance, c.NumBuckets/4)
	}
	if !(c.LayerNormEps > 0) {
		return fmt.Errorf("layer_norm_epsilon = %g must be positive", c.LayerNormEps)
	}
	if _, _, err := c.feedForward(); err != nil {
		return err
	}
	return nil
}

// feedForward parses feed_forward_proj as HF does ("gated-gelu" means
// gelu_new, the tanh approximation) and returns whether it is gated and the
// activation name.
func (c T5Config) feedForward() (gated bool, act string, err error) {
	parts := strings.Split(c.FeedForwardProj, "-")
	switch {
	case len(parts) == 1:
		act = parts[0]
	case len(parts) == 2 && parts[0] == "gated":
		gated, act = true, parts[1]
	default:
		return false, "", fmt.Errorf("feed_forward_proj %q: want ACT or gated-ACT", c.FeedForwardProj)
	}
	if gated && act == "gelu" {
		act = "gelu_new" // configuration_t5.py: "gated-gelu" is gelu_new
	}
	if _, ok := t5Activations[act]; !ok {
		return false, "", fmt.Errorf("feed_forward_proj %q: unsupported activation %q", c.FeedForwardProj, act)
	}
	return gated, act, nil
}
