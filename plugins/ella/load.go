// load.go loads what one ELLA configuration needs: the T5 encoder (a
// Hugging Face folder), its SentencePiece tokenizer (spiece.model or
// tokenizer.json in the folder, or an explicit file or folder), and the
// ELLA connector file, then checks that they fit together and fit the
// host's U-Net: the connector's input width must equal T5's d_model and its
// output width the U-Net's cross-attention context dim. Every error names
// the file or folder at fault.
//
// It does not cache prompts (cache.go) or talk to the host (plugin.go).
package ella

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/tokenizer"
)

// Config is one model configuration, as the host's parameters give it.
type Config struct {
	ELLAPath    string // connector .safetensors
	T5Dir       string // Hugging Face T5 encoder folder
	T5Tokenizer string // spiece.model, tokenizer.json or a folder; "" = in T5Dir
	Heads       int    // connector heads (0 = 8, the release)
	T5FP16      bool   // emulate an all-fp16 PyTorch T5 (spec §7)
}

// Models are the loaded, mutually checked models of one Config.
type Models struct {
	Config    Config
	Tokenizer *tokenizer.SentencePiece
	T5        *models.T5Encoder
	ELLA      *models.ELLA
}

// ErrConfig marks a configuration that cannot run (missing or mismatched
// files).
var ErrConfig = errors.New("ella: bad configuration")

// Load loads and cross-checks the models of cfg.
func Load(cfg Config) (*Models, error) {
	switch {
	case cfg.ELLAPath == "":
		return nil, fmt.Errorf("%w: parameter %q (the ELLA connector file, e.g. ella-sd1.5-tsc-t5xl.safetensors) is required", ErrConfig, ParamELLA)
	case cfg.T5Dir == "":
		return nil, fmt.Errorf("%w: parameter %q (the FLAN-T5-XL encoder folder) is required", ErrConfig, ParamT5)
	}
	tok, err := loadTokenizer(cfg)
	if err != nil {
		return nil, err
	}
	e, err := models.OpenELLA(cfg.ELLAPath, cfg.Heads)
	if err != nil {
		return nil, fmt.Errorf("ella connector %s: %w", cfg.ELLAPath, err)
	}
	t5, err := models.LoadT5EncoderWith(cfg.T5Dir, models.T5Options{EmulateFP16: cfg.T5FP16})
	if err != nil {
		return nil, fmt.Errorf("t5 encoder %s: %w", cfg.T5Dir, err)
	}
	if err := e.CheckInputDim(t5.DModel()); err != nil {
		return nil, fmt.Errorf("ella connector %s with t5 encoder %s: %w", cfg.ELLAPath, cfg.T5Dir, err)
	}
	if v := tok.VocabSize(); v > t5.VocabSize() {
		return nil, fmt.Errorf("%w: the tokenizer has %d pieces but t5 encoder %s embeds only %d (wrong tokenizer for this model?)", ErrConfig, v, cfg.T5Dir, t5.VocabSize())
	}
	return &Models{Config: cfg, Tokenizer: tok, T5: t5, ELLA: e}, nil
}

// loadTokenizer finds the T5 tokenizer: an explicit file (spiece.model or
// tokenizer.json) or folder, else the T5 folder itself.
func loadTokenizer(cfg Config) (*tokenizer.SentencePiece, error) {
	p := cfg.T5Tokenizer
	if p == "" {
		if st, err := os.Stat(cfg.T5Dir); err != nil {
			return nil, fmt.Errorf("t5 encoder: %w", err)
		} else if !st.IsDir() {
			return nil, fmt.Errorf("%w: t5 encoder %s is not a folder (want a Hugging Face T5 folder with config.json and model.safetensors)", ErrConfig, cfg.T5Dir)
		}
		tok, err := tokenizer.LoadT5Tokenizer(cfg.T5Dir)
		if err != nil {
			return nil, fmt.Errorf("t5 encoder %s has no tokenizer (give one with --t5-tokenizer PATH): %w", cfg.T5Dir, err)
		}
		return tok, nil
	}
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("t5 tokenizer: %w", err)
	}
	var tok *tokenizer.SentencePiece
	switch {
	case st.IsDir():
		tok, err = tokenizer.LoadT5Tokenizer(p)
	case strings.EqualFold(filepath.Ext(p), ".json"):
		tok, err = tokenizer.LoadSentencePieceJSON(p)
	default:
		tok, err = tokenizer.LoadSentencePiece(p)
	}
	if err != nil {
		return nil, fmt.Errorf("t5 tokenizer %s: %w", p, err)
	}
	return tok, nil
}

// CheckContextDim refuses a connector whose width differs from the U-Net's
// cross-attention context dim.
func (m *Models) CheckContextDim(contextDim int) error {
	if err := m.ELLA.CheckContextDim(contextDim); err != nil {
		return fmt.Errorf("ella connector %s: %w", m.Config.ELLAPath, err)
	}
	return nil
}
