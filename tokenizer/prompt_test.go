// prompt_test.go checks the A1111 attention parser against the examples in
// A1111's prompt_parser docstring and further cases derived from its rules,
// and the 75-token chunking (comma backtrack, BREAK, padding) on a tiny
// vocabulary where every letter is one token, plus per-token weights on the
// real CLIP vocabulary when the golden data is present. It does not run a
// text encoder (ApplyEmphasis is checked on hand-made numbers).
package tokenizer

import (
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParsePromptAttention(t *testing.T) {
	type f = WeightedText
	br := f{Text: "BREAK", Weight: -1, Break: true}
	tests := []struct {
		in   string
		want []f
	}{
		// A1111 docstring examples.
		{"normal text", []f{{Text: "normal text", Weight: 1}}},
		{"an (important) word", []f{{Text: "an ", Weight: 1}, {Text: "important", Weight: 1.1}, {Text: " word", Weight: 1}}},
		{"(unbalanced", []f{{Text: "unbalanced", Weight: 1.1}}},
		{`\(literal\]`, []f{{Text: "(literal]", Weight: 1}}},
		{"(unnecessary)(parens)", []f{{Text: "unnecessaryparens", Weight: 1.1}}},
		{"a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", []f{
			{Text: "a ", Weight: 1},
			{Text: "house", Weight: 1.5730000000000004},
			{Text: " ", Weight: 1.1},
			{Text: "on", Weight: 1},
			{Text: " a ", Weight: 1.1},
			{Text: "hill", Weight: 0.55},
			{Text: ", sun, ", Weight: 1.1},
			{Text: "sky", Weight: 1.4641000000000006},
			{Text: ".", Weight: 1.1},
		}},
		// Derived from the rules.
		{"a (b:1.5) [c]", []f{{Text: "a ", Weight: 1}, {Text: "b", Weight: 1.5}, {Text: " ", Weight: 1}, {Text: "c", Weight: 1 / 1.1}}},
		{"", []f{{Text: "", Weight: 1}}},
		{"((a))", []f{{Text: "a", Weight: 1.2100000000000002}}}, // Python: 1.0*1.1*1.1
		{"[[a]]", []f{{Text: "a", Weight: 0.8264462809917354}}},
		{"((a:2))", []f{{Text: "a", Weight: 2 * 1.1}}},
		{"(a: 0.5 )", []f{{Text: "a", Weight: 0.5}}},
		{"(a:-1)", []f{{Text: "a", Weight: -1}}},
		{"[a:1.5]", []f{{Text: "a:1.5", Weight: 1 / 1.1}}},
		{"a) b]", []f{{Text: "a) b]", Weight: 1}}},
		{`\\x \y`, []f{{Text: `\x y`, Weight: 1}}},
		{"(a:.)", []f{{Text: "a:.)", Weight: 1.1}}}, // A1111 crashes here
		{"(a:1" + strings.Repeat("0", 400) + ")", []f{{Text: "a", Weight: math.Inf(1)}}},
		{"time: noon", []f{{Text: "time: noon", Weight: 1}}},
		{"a BREAK b", []f{{Text: "a", Weight: 1}, br, {Text: "b", Weight: 1}}},
		{"BREAK", []f{{Text: "", Weight: 1}, br, {Text: "", Weight: 1}}},
		{"aBREAK b", []f{{Text: "aBREAK b", Weight: 1}}},
		{"a break b", []f{{Text: "a break b", Weight: 1}}},
		// BREAK inside brackets is no longer a break in A1111.
		{"(a BREAK b)", []f{{Text: "a", Weight: 1.1}, {Text: "BREAK", Weight: -1.1}, {Text: "b", Weight: 1.1}}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, ParsePromptAttention(tt.in)); diff != "" {
				t.Errorf("ParsePromptAttention(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

// letterCLIP is a tokenizer with only byte symbols: every single-letter word
// and "," are one token each (ids: byte order of simple_tokenizer).
func letterCLIP(t testing.TB) *CLIP {
	t.Helper()
	vocab, merges := VocabFromMerges(nil)
	c, err := NewCLIP(vocab, merges)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// letters returns n space-separated single-letter words.
func letters(n int) []string {
	w := make([]string, n)
	for i := range w {
		w[i] = string(rune('a' + i%26))
	}
	return w
}

func TestEncodeA1111(t *testing.T) {
	c := letterCLIP(t)
	S, E := c.StartID, c.EndID
	a, _ := c.TokenID("a</w>")
	b, _ := c.TokenID("b</w>")
	cc, _ := c.TokenID("c</w>")
	comma, _ := c.TokenID(",</w>")

	// window builds one expected 77-token window.
	window := func(toks []int, ws []float32) ([]int, []float32) {
		ids := append([]int{S}, toks...)
		w := append([]float32{1}, ws...)
		for len(ids) < CLIPMaxLen-1 {
			ids = append(ids, E)
			w = append(w, 1)
		}
		return append(ids, E), append(w, 1)
	}
	ones := func(n int) []float32 {
		w := make([]float32, n)
		for i := range w {
			w[i] = 1
		}
		return w
	}
	ids := func(words []string) []int {
		var out []int
		for _, w := range words {
			id, ok := c.TokenID(w + "</w>")
			if !ok {
				t.Fatalf("no token %q", w)
			}
			out = append(out, id)
		}
		return out
	}

	t.Run("weights", func(t *testing.T) {
		wi, ww := window([]int{a, b, cc}, []float32{1, 1.5, float32(1 / 1.1)})
		want := WeightedTokens{IDs: wi, Weights: ww, Chunks: 1, TokenCount: 3}
		if diff := cmp.Diff(want, c.EncodeA1111("a (b:1.5) [c]", A1111Options{})); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	t.Run("empty", func(t *testing.T) {
		got := c.EncodeA1111("", A1111Options{})
		wi, ww := window(nil, nil)
		if got.Chunks != 1 || got.TokenCount != 0 || !slices.Equal(got.IDs, wi) || !slices.Equal(got.Weights, ww) {
			t.Errorf("got %+v", got)
		}
	})
	t.Run("no emphasis", func(t *testing.T) {
		got := c.EncodeA1111("(a)", A1111Options{NoEmphasis: true})
		lp, _ := c.TokenID("(</w>")
		rp, _ := c.TokenID(")</w>")
		wi, ww := window([]int{lp, a, rp}, ones(3))
		if got.Chunks != 1 || !slices.Equal(got.IDs, wi) || !slices.Equal(got.Weights, ww) {
			t.Errorf("got %v, want the brackets as text with weight 1", got.IDs[:5])
		}
	})
	t.Run("80 tokens make two windows", func(t *testing.T) {
		w := letters(80)
		got := c.EncodeA1111(strings.Join(w, " "), A1111Options{})
		w1, m1 := window(ids(w[:75]), ones(75))
		w2, m2 := window(ids(w[75:]), ones(5))
		if got.Chunks != 2 || got.TokenCount != 80 || !slices.Equal(got.IDs, append(w1, w2...)) || !slices.Equal(got.Weights, append(m1, m2...)) {
			t.Errorf("got chunks %d count %d ids %v", got.Chunks, got.TokenCount, got.IDs)
		}
	})
	t.Run("exactly 75 tokens stay one window", func(t *testing.T) {
		got := c.EncodeA1111(strings.Join(letters(75), " "), A1111Options{})
		if got.Chunks != 1 || got.TokenCount != 75 || len(got.IDs) != 77 {
			t.Errorf("got chunks %d count %d", got.Chunks, got.TokenCount)
		}
	})
	// 70 words, a comma, 10 words: at the 76th token the 4 words after the
	// comma move to the second window.
	head, tail := letters(70), letters(10)
	prompt := strings.Join(head, " ") + ", " + strings.Join(tail, " ")
	t.Run("comma backtrack", func(t *testing.T) {
		w1, m1 := window(append(ids(head), comma), ones(71))
		w2, m2 := window(ids(tail), ones(10))
		want := WeightedTokens{IDs: append(w1, w2...), Weights: append(m1, m2...), Chunks: 2, TokenCount: 85}
		if diff := cmp.Diff(want, c.EncodeA1111(prompt, A1111Options{})); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	t.Run("comma backtrack off", func(t *testing.T) {
		got := c.EncodeA1111(prompt, A1111Options{CommaBacktrack: -1})
		w1, _ := window(append(append(ids(head), comma), ids(tail[:4])...), ones(75))
		w2, _ := window(ids(tail[4:]), ones(6))
		if got.Chunks != 2 || !slices.Equal(got.IDs, append(w1, w2...)) {
			t.Errorf("got ids %v", got.IDs)
		}
	})
	t.Run("comma too far back", func(t *testing.T) {
		// comma after 50 words: 25 tokens before the end > 20, no backtrack
		p := strings.Join(letters(50), " ") + ", " + strings.Join(letters(30), " ")
		got := c.EncodeA1111(p, A1111Options{})
		if got.Chunks != 2 || got.IDs[76] != E || got.IDs[75] == E {
			t.Errorf("first window should be full: %v", got.IDs[:77])
		}
	})
	t.Run("BREAK", func(t *testing.T) {
		w1, m1 := window([]int{a}, ones(1))
		w2, m2 := window([]int{b}, ones(1))
		want := WeightedTokens{IDs: append(w1, w2...), Weights: append(m1, m2...), Chunks: 2, TokenCount: 76}
		if diff := cmp.Diff(want, c.EncodeA1111("a BREAK b", A1111Options{})); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	t.Run("leading BREAK gives an empty window", func(t *testing.T) {
		got := c.EncodeA1111("BREAK a", A1111Options{})
		w1, _ := window(nil, nil)
		w2, _ := window([]int{a}, ones(1))
		if got.Chunks != 2 || !slices.Equal(got.IDs, append(w1, w2...)) {
			t.Errorf("got %v", got.IDs)
		}
	})
	t.Run("pad chunks", func(t *testing.T) {
		got := c.PadChunks(c.EncodeA1111("a", A1111Options{}), 3)
		if got.Chunks != 3 || len(got.IDs) != 3*77 || len(got.Weights) != 3*77 || got.IDs[77] != S || got.IDs[78] != E || got.IDs[2*77+76] != E {
			t.Errorf("got %+v", got)
		}
	})
}

func TestApplyEmphasis(t *testing.T) {
	tests := []struct {
		name    string
		z, w    []float32
		mode    EmphasisMode
		want    []float32
		wantErr bool
	}{
		{"no norm", []float32{1, 2, 3, 4}, []float32{1, 2}, EmphasisNoNorm, []float32{1, 2, 6, 8}, false},
		// mean before 2.5, after (1+2+6+8)/4 = 4.25: scale 2.5/4.25
		{"original", []float32{1, 2, 3, 4}, []float32{1, 2}, EmphasisOriginal,
			[]float32{1 * 2.5 / 4.25, 2 * 2.5 / 4.25, 6 * 2.5 / 4.25, 8 * 2.5 / 4.25}, false},
		{"bad shape", []float32{1, 2, 3}, []float32{1, 2}, EmphasisOriginal, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			z := slices.Clone(tt.z)
			err := ApplyEmphasis(z, tt.w, 2, tt.mode)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if tt.wantErr {
				return
			}
			for i := range z {
				if d := z[i] - tt.want[i]; d > 1e-6 || d < -1e-6 {
					t.Errorf("z = %v, want %v", z, tt.want)
					break
				}
			}
		})
	}
}

// TestEncodeA1111RealVocab checks weights on real CLIP ids (320 "a",
// 736 "red", 2368 "cat").
func TestEncodeA1111RealVocab(t *testing.T) {
	dir := filepath.Join(goldenDir(t), "data", "clip")
	c, err := LoadCLIP(filepath.Join(dir, "vocab.json"), filepath.Join(dir, "merges.txt"))
	if err != nil {
		t.Fatal(err)
	}
	got := c.EncodeA1111("a (red:1.5) [cat]", A1111Options{})
	if diff := cmp.Diff([]int{CLIPStartID, 320, 736, 2368, CLIPEndID, CLIPEndID}, got.IDs[:6]); diff != "" {
		t.Errorf("ids (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]float32{1, 1, 1.5, float32(1 / 1.1), 1, 1}, got.Weights[:6]); diff != "" {
		t.Errorf("weights (-want +got):\n%s", diff)
	}
	if got.Chunks != 1 || got.TokenCount != 3 {
		t.Errorf("chunks %d, token count %d", got.Chunks, got.TokenCount)
	}
}
