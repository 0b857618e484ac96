// clip_test.go checks the CLIP BPE tokenizer: text cleanup and the
// pre-tokenizer, BPE merges on a tiny in-memory vocabulary, loading errors,
// padding, file discovery, and (when the shared golden data is present) the
// OpenAI gzip loader building exactly vocab.json's table. It does not
// repeat the corpus check (corpus_test.go) nor touch the real HF cache.
package tokenizer

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCLIPCleanText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"A Photo", "a photo"},
		{"  a\t\n b  ", " a b "},
		{"e\u0301", "\u00e9"},    // NFC composes
		{"\u0130", "i\u0307"},    // full lower-case mapping
		{"ΟΔΟΣ", "οδοσ"},         // per-character: no final sigma
		{"a\u200db", "a\u200db"}, // format characters are kept
		{"a\u3000b", "a b"},      // ideographic space is whitespace
		{"bad\xffbyte", "bad\ufffdbyte"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := clipCleanText(tt.in); got != tt.want {
				t.Errorf("clipCleanText(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestCLIPPreTokenize(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"a photo of a cat", []string{"a", "photo", "of", "a", "cat"}},
		{"it's they're", []string{"it", "'s", "they", "'re"}},
		{"abc123", []string{"abc", "1", "2", "3"}},
		{"hello, world!!", []string{"hello", ",", "world", "!!"}},
		{"<|startoftext|>x<|endoftext|>", []string{"<|startoftext|>", "x", "<|endoftext|>"}},
		{"'x", []string{"'", "x"}},
		{"東京タワー", []string{"東京タワー"}},
		{"🐱\u200d👤", []string{"🐱\u200d👤"}},
		{"", nil},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, clipPreTokenize(tt.in)); diff != "" {
				t.Errorf("clipPreTokenize(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

// tinyCLIP has merges c+a, ca+t</w> and the specials.
func tinyCLIP(t testing.TB) *CLIP {
	t.Helper()
	vocab, merges := VocabFromMerges([][2]string{{"c", "a"}, {"ca", "t</w>"}})
	c, err := NewCLIP(vocab, merges)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCLIPEncodeTiny(t *testing.T) {
	c := tinyCLIP(t)
	cat, ok := c.TokenID("cat</w>")
	if !ok || c.VocabSize() != 512+2+2 || c.StartID != 514 || c.EndID != 515 {
		t.Fatalf("vocab: cat %d %v size %d start %d end %d", cat, ok, c.VocabSize(), c.StartID, c.EndID)
	}
	ca, _ := c.TokenID("ca")
	tt, _ := c.TokenID("t")
	s, _ := c.TokenID("s</w>")
	tests := []struct {
		in   string
		want []int
	}{
		{"cat", []int{c.StartID, cat, c.EndID}},
		{"CAT  cat", []int{c.StartID, cat, cat, c.EndID}},
		{"cats", []int{c.StartID, ca, tt, s, c.EndID}},
		{"", []int{c.StartID, c.EndID}},
		{"<|endoftext|>", []int{c.StartID, c.EndID, c.EndID}},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			for _, pass := range []string{"first", "cached"} {
				if diff := cmp.Diff(tc.want, c.Encode(tc.in)); diff != "" {
					t.Errorf("%s Encode(%q) (-want +got):\n%s", pass, tc.in, diff)
				}
			}
		})
	}
	if got := c.Decode(c.Encode("Cats, é!")); got != "cats , é !" {
		t.Errorf("Decode = %q", got)
	}
}

func TestNewCLIPErrors(t *testing.T) {
	tests := []struct {
		name  string
		vocab map[string]int
	}{
		{"empty", nil},
		{"no specials", map[string]int{"a": 0}},
		{"negative id", map[string]int{"a": -1, clipStartText: 1, clipEndText: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewCLIP(tt.vocab, nil); err == nil {
				t.Error("want an error")
			}
		})
	}
}

func TestReadMerges(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		limit   int
		want    int
		wantErr bool
	}{
		{"header", "#version: 0.2\na b\nc d\n", -1, 2, false},
		{"openai header", "\"bpe_simple_vocab_16e6.txt#version: 0.2\na b\n", -1, 1, false},
		{"limit", "#version: 0.2\na b\nc d\ne f\n", 2, 2, false},
		{"crlf", "a b\r\nc d\r\n", -1, 2, false},
		{"one symbol", "#version: 0.2\nab\n", -1, 0, true},
		{"three symbols", "a b c\n", -1, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ReadMerges(strings.NewReader(tt.in), tt.limit)
			if (err != nil) != tt.wantErr || len(m) != tt.want {
				t.Errorf("got %v, %v; want %d merges, err %v", m, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestPadCLIP(t *testing.T) {
	tests := []struct {
		ids  []int
		n    int
		want []int
	}{
		{[]int{1, 5, 2}, 5, []int{1, 5, 2, 2, 2}},
		{[]int{1, 5, 6, 7, 2}, 4, []int{1, 5, 6, 2}},
		{[]int{1, 5, 2}, 3, []int{1, 5, 2}},
		{[]int{1, 2}, 0, nil},
	}
	for _, tt := range tests {
		if got := PadCLIP(tt.ids, tt.n, 2, 2); !slices.Equal(got, tt.want) {
			t.Errorf("PadCLIP(%v, %d) = %v, want %v", tt.ids, tt.n, got, tt.want)
		}
	}
	c := tinyCLIP(t)
	if got := c.EncodePadded(strings.Repeat("cat ", 100)); len(got) != 77 || got[76] != c.EndID || got[75] == c.EndID {
		t.Errorf("EncodePadded long prompt: %v", got)
	}
}

func TestFindCLIPTokenizer(t *testing.T) {
	write := func(dir string) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"vocab.json", "merges.txt"} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte("{}"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	root := t.TempDir()
	explicit := filepath.Join(root, "explicit")
	write(explicit)
	model := filepath.Join(root, "model")
	write(filepath.Join(model, "tokenizer"))
	if err := os.WriteFile(filepath.Join(model, "unet.safetensors"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	hf := filepath.Join(root, "hf")
	snap := filepath.Join(hf, "hub", CLIPHubRepo, "snapshots", "abc123")
	write(snap)
	empty := filepath.Join(root, "empty")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HF_HUB_CACHE", "")
	t.Setenv("HOME", empty)

	tests := []struct {
		name, explicit, model, hfHome, wantDir string
		wantErr                                bool
	}{
		{"explicit", explicit, model, hf, explicit, false},
		{"explicit without files", empty, model, hf, "", true},
		{"model folder", "", model, hf, filepath.Join(model, "tokenizer"), false},
		{"model file in folder", "", filepath.Join(model, "unet.safetensors"), hf, filepath.Join(model, "tokenizer"), false},
		{"hf cache", "", empty, hf, snap, false},
		{"nowhere", "", empty, empty, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("HF_HOME", tt.hfHome)
			v, m, err := FindCLIPTokenizer(tt.explicit, tt.model)
			if tt.wantErr {
				if !errors.Is(err, ErrCLIPTokenizerNotFound) || !strings.Contains(err.Error(), "vocab.json and merges.txt") {
					t.Errorf("err = %v", err)
				}
				return
			}
			if err != nil || v != filepath.Join(tt.wantDir, "vocab.json") || m != filepath.Join(tt.wantDir, "merges.txt") {
				t.Errorf("got %s %s %v, want in %s", v, m, err, tt.wantDir)
			}
		})
	}
}

// TestCLIPOpenAIGzip rebuilds OpenAI's gzip merge list from merges.txt and
// checks that the vocabulary built from it equals vocab.json.
func TestCLIPOpenAIGzip(t *testing.T) {
	dir := filepath.Join(goldenDir(t), "data", "clip")
	ref, err := LoadCLIP(filepath.Join(dir, "vocab.json"), filepath.Join(dir, "merges.txt"))
	if err != nil {
		t.Fatal(err)
	}
	merges, err := os.ReadFile(filepath.Join(dir, "merges.txt"))
	if err != nil {
		t.Fatal(err)
	}
	_, body, _ := bytes.Cut(merges, []byte("\n"))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("\"bpe_simple_vocab_16e6.txt#version: 0.2\n"))
	zw.Write(body)
	zw.Write([]byte("extra1 extra2\n")) // beyond the 48,894 merges kept: ignored
	zw.Close()
	got, err := ReadCLIPOpenAI(&gz)
	if err != nil {
		t.Fatal(err)
	}
	if got.VocabSize() != ref.VocabSize() || got.StartID != CLIPStartID || got.EndID != CLIPEndID {
		t.Fatalf("size %d start %d end %d", got.VocabSize(), got.StartID, got.EndID)
	}
	for id := range ref.VocabSize() {
		if got.Token(id) != ref.Token(id) {
			t.Fatalf("id %d: %q, vocab.json has %q", id, got.Token(id), ref.Token(id))
		}
	}
	want := []int{49406, 320, 1125, 539, 320, 2368, 49407}
	if ids := got.Encode("a photo of a cat"); !slices.Equal(ids, want) {
		t.Errorf("Encode = %v, want %v", ids, want)
	}
}
