// fuzz_test.go holds the fuzz targets for the three parsers of untrusted
// input: spiece.model bytes (FuzzSentencePieceModel), text through CLIP BPE
// (FuzzCLIPEncode) and A1111 prompt syntax (FuzzPromptParse). Seeds live in
// testdata/fuzz/<target>/; each target also checks output invariants. They
// do not compare against references (the corpus tests do).
package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// fuzzTexts are encoded with every model the fuzzer manages to build.
var fuzzTexts = []string{"", " ", "ab", "A\tb  c", "x\xffé{}", "\u2581\u2581"}

func FuzzSentencePieceModel(f *testing.F) {
	f.Add(testModel{pieces: append(basePieces(), SPPiece{"▁", -1, PieceNormal}, SPPiece{"a", -2, PieceNormal}), charsmap: testCharsmap()}.bytes())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := ParseSPModel(data)
		if err != nil {
			return
		}
		sp, err := NewSentencePiece(spec)
		if err != nil {
			return
		}
		for _, text := range fuzzTexts {
			ids := sp.Encode(text)
			for _, id := range ids {
				if id < 0 || id >= sp.VocabSize() {
					t.Fatalf("Encode(%q) produced id %d outside [0, %d)", text, id, sp.VocabSize())
				}
			}
			if sp.EOSID >= 0 && (len(ids) == 0 || ids[len(ids)-1] != sp.EOSID) {
				t.Fatalf("Encode(%q) = %v does not end with EOS %d", text, ids, sp.EOSID)
			}
			_ = sp.Decode(ids)
		}
	})
}

func FuzzCLIPEncode(f *testing.F) {
	for _, s := range []string{"a photo of a cat", "it's CATS, 123!", "東京 🐱\u200d👤", "\xff\xfe", ""} {
		f.Add(s)
	}
	c := tinyCLIP(f)
	f.Fuzz(func(t *testing.T, text string) {
		ids := c.Encode(text)
		if len(ids) < 2 || ids[0] != c.StartID || ids[len(ids)-1] != c.EndID {
			t.Fatalf("Encode(%q) = %v: not framed by start/end", text, ids)
		}
		for _, id := range ids {
			if c.Token(id) == "" {
				t.Fatalf("Encode(%q) produced unknown id %d", text, id)
			}
		}
		if strings.Contains(text, "<|") || strings.Contains(text, "</w>") {
			return // specials and literal "</w>" make Decode ambiguous
		}
		// Round trip: the symbols spell the cleaned text, spaces aside.
		got := strings.ReplaceAll(c.Decode(ids), " ", "")
		want := strings.ReplaceAll(clipCleanText(text), " ", "")
		if got != want {
			t.Fatalf("round trip of %q: decoded %q, cleaned %q", text, got, want)
		}
		if !utf8.ValidString(got) {
			t.Fatalf("Decode gave invalid UTF-8 for %q", text)
		}
	})
}

func FuzzPromptParse(f *testing.F) {
	for _, s := range []string{"a (b:1.5) [c]", "((a)) [[b]] (c:-0.5)", `\(x\) \\ \`, "a BREAK b", "(a BREAK b", "(a:.)", ""} {
		f.Add(s)
	}
	c := letterCLIP(f)
	f.Fuzz(func(t *testing.T, prompt string) {
		parts := ParsePromptAttention(prompt)
		if len(parts) == 0 {
			t.Fatalf("ParsePromptAttention(%q) returned nothing", prompt)
		}
		n := 0
		for _, p := range parts {
			n += len(p.Text)
		}
		if n > len(prompt) {
			t.Fatalf("ParsePromptAttention(%q): fragments hold %d bytes, more than the prompt", prompt, n)
		}
		w := c.EncodeA1111(prompt, A1111Options{})
		if w.Chunks < 1 || len(w.IDs) != CLIPMaxLen*w.Chunks || len(w.Weights) != len(w.IDs) {
			t.Fatalf("EncodeA1111(%q): %d chunks, %d ids, %d weights", prompt, w.Chunks, len(w.IDs), len(w.Weights))
		}
		for k := range w.Chunks {
			if w.IDs[k*CLIPMaxLen] != c.StartID || w.IDs[(k+1)*CLIPMaxLen-1] != c.EndID {
				t.Fatalf("EncodeA1111(%q): window %d not framed", prompt, k)
			}
		}
	})
}
