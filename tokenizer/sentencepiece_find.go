// sentencepiece_find.go loads the T5 tokenizer of a Hugging Face model
// folder: spiece.model if present (the reference), else tokenizer.json, in
// the folder itself or its tokenizer/ or tokenizer_3/ subfolder (diffusers
// layouts). A folder with neither is a clear error naming what was looked for.
//
// It deliberately does not search caches or download: the folder is given.
package tokenizer

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// ErrT5TokenizerNotFound is wrapped by LoadT5Tokenizer when no file exists.
var ErrT5TokenizerNotFound = errors.New("t5 tokenizer not found")

// LoadT5Tokenizer loads spiece.model or tokenizer.json from dir.
func LoadT5Tokenizer(dir string) (*SentencePiece, error) {
	var tried []string
	for _, sub := range []string{"", "tokenizer", "tokenizer_3"} {
		d := filepath.Join(dir, sub)
		if p := filepath.Join(d, "spiece.model"); isFile(p) {
			return LoadSentencePiece(p)
		}
		if p := filepath.Join(d, "tokenizer.json"); isFile(p) {
			return LoadSentencePieceJSON(p)
		}
		tried = append(tried, d)
	}
	return nil, fmt.Errorf("%w: no spiece.model or tokenizer.json in %s; copy them from the T5 model's Hugging Face repository (e.g. google/flan-t5-xl)",
		ErrT5TokenizerNotFound, strings.Join(tried, ", "))
}
