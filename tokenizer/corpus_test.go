// corpus_test.go runs both tokenizers over the shared golden corpora when
// they are present (../../shared/golden or $SDBRIDGE_GOLDEN_DIR), so the
// package can be checked on its own; golden/ runs the same check in TestGolden.
// It skips, rather than fails, when the golden directory is absent.
package tokenizer

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// goldenDir returns the shared golden directory or skips the test.
func goldenDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("SDBRIDGE_GOLDEN_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "shared", "golden")
	}
	if _, err := os.Stat(filepath.Join(dir, "cases")); err != nil {
		t.Skipf("golden directory %s not present", dir)
	}
	return dir
}

type corpusLine struct {
	Text string `json:"text"`
	IDs  []int  `json:"ids"`
}

func readCorpus(t testing.TB, path string) []corpusLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []corpusLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var l corpusLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		out = append(out, l)
	}
	return out
}

// checkCorpus fails on every mismatching prompt (the first few in detail).
func checkCorpus(t *testing.T, lines []corpusLine, encode func(string) []int) {
	t.Helper()
	bad := 0
	for _, l := range lines {
		got := encode(l.Text)
		if !slices.Equal(got, l.IDs) {
			bad++
			if bad <= 5 {
				t.Errorf("%q (-want +got):\n%s", l.Text, cmp.Diff(l.IDs, got))
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d prompts differ", bad, len(lines))
	}
	if len(lines) == 0 {
		t.Error("empty corpus")
	}
}

func TestCLIPCorpus(t *testing.T) {
	dir := goldenDir(t)
	tok, err := LoadCLIP(filepath.Join(dir, "data", "clip", "vocab.json"), filepath.Join(dir, "data", "clip", "merges.txt"))
	if err != nil {
		t.Fatal(err)
	}
	checkCorpus(t, readCorpus(t, filepath.Join(dir, "cases", "clip_tokenize.jsonl")), tok.Encode)
}

func TestSentencePieceCorpus(t *testing.T) {
	dir := goldenDir(t)
	lines := readCorpus(t, filepath.Join(dir, "cases", "t5_tokenize.jsonl"))
	t.Run("spiece.model", func(t *testing.T) {
		sp, err := LoadSentencePiece(filepath.Join(dir, "data", "t5", "spiece.model"))
		if err != nil {
			t.Fatal(err)
		}
		checkCorpus(t, lines, sp.Encode)
	})
	t.Run("tokenizer.json", func(t *testing.T) {
		sp, err := LoadSentencePieceJSON(filepath.Join(dir, "data", "t5", "tokenizer.json"))
		if err != nil {
			t.Fatal(err)
		}
		checkCorpus(t, lines, sp.Encode)
	})
}
