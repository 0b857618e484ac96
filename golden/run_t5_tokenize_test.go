// run_t5_tokenize_test.go checks the SentencePiece tokenizer against the
// golden corpus with both loaders (spiece.model and tokenizer.json): a prompt
// counts as bad if either loader's ids differ. It does not pad.
package golden

import (
	"fmt"
	"path/filepath"
	"slices"

	"github.com/sdbridge/sdbridge/tokenizer"
)

// checkT5Tokenize compares the SentencePiece tokenizer with the corpus.
func checkT5Tokenize(root, path string) (bad, total int, err error) {
	dir := filepath.Join(root, "data", "t5")
	fromModel, err := tokenizer.LoadSentencePiece(filepath.Join(dir, "spiece.model"))
	if err != nil {
		return 0, 0, err
	}
	fromJSON, err := tokenizer.LoadSentencePieceJSON(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		return 0, 0, err
	}
	shown := 0
	return compareCorpus(path, "t5", func(text string) []int {
		a, b := fromModel.Encode(text), fromJSON.Encode(text)
		if !slices.Equal(a, b) {
			if shown++; shown <= maxShownDiffs {
				fmt.Printf("t5 loaders disagree on %q\n  spiece.model   %v\n  tokenizer.json %v\n", text, a, b)
			}
			return nil // counted as a mismatch against the corpus
		}
		return a
	})
}
