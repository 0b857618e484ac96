// run_clip_tokenize_test.go checks the CLIP BPE tokenizer against the golden
// corpus (every prompt's ids must match exactly), and holds compareCorpus,
// the JSONL corpus reader shared with run_t5_tokenize_test.go. It does not
// pad or chunk.
package golden

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/sdbridge/sdbridge/tokenizer"
)

// checkCLIPTokenize compares the CLIP tokenizer with the corpus.
func checkCLIPTokenize(root, path string) (bad, total int, err error) {
	dir := filepath.Join(root, "data", "clip")
	tok, err := tokenizer.LoadCLIP(filepath.Join(dir, "vocab.json"), filepath.Join(dir, "merges.txt"))
	if err != nil {
		return 0, 0, err
	}
	return compareCorpus(path, "clip", tok.Encode)
}

// maxShownDiffs bounds how many mismatching prompts are printed per corpus.
const maxShownDiffs = 5

// compareCorpus runs encode over every line of the corpus at path.
func compareCorpus(path, name string, encode func(string) []int) (bad, total int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var rec struct {
			Text string `json:"text"`
			IDs  []int  `json:"ids"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return bad, total, fmt.Errorf("%s line %d: %w", path, total+1, err)
		}
		total++
		got := encode(rec.Text)
		if !slices.Equal(got, rec.IDs) {
			bad++
			if bad <= maxShownDiffs {
				fmt.Printf("%s diff %q\n  got  %v\n  want %v\n", name, rec.Text, got, rec.IDs)
			}
		}
	}
	return bad, total, sc.Err()
}
