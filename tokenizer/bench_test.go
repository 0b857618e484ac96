// bench_test.go times encoding a 75-token prompt with each tokenizer on the
// real vocabularies (skipped when the shared golden data is absent), and the
// A1111 path (parse + chunk) on the same prompt. Load time is not measured.
package tokenizer

import (
	"path/filepath"
	"testing"
)

// benchPrompt is about 75 CLIP tokens of ordinary prompt text.
const benchPrompt = "masterpiece, best quality, a photograph of an astronaut riding a white horse " +
	"across a misty alpine meadow at golden hour, dramatic volumetric lighting, " +
	"highly detailed spacesuit with scratches and reflections, snow-capped mountains " +
	"in the background, shallow depth of field, 35mm film grain, cinematic color grading, " +
	"wildflowers in the foreground, soft rim light, ultra sharp focus, award winning"

func benchCLIP(b *testing.B) *CLIP {
	dir := filepath.Join(goldenDir(b), "data", "clip")
	c, err := LoadCLIP(filepath.Join(dir, "vocab.json"), filepath.Join(dir, "merges.txt"))
	if err != nil {
		b.Fatal(err)
	}
	if n := len(c.EncodeBody(benchPrompt)); n < 70 || n > 75 {
		b.Fatalf("bench prompt has %d tokens, want about 75", n)
	}
	return c
}

func BenchmarkCLIPEncode75(b *testing.B) {
	c := benchCLIP(b)
	b.SetBytes(int64(len(benchPrompt)))
	b.ReportAllocs()
	for b.Loop() {
		c.Encode(benchPrompt)
	}
}

// BenchmarkCLIPEncode75Cold clears the word cache every time: full BPE cost.
func BenchmarkCLIPEncode75Cold(b *testing.B) {
	c := benchCLIP(b)
	b.SetBytes(int64(len(benchPrompt)))
	b.ReportAllocs()
	for b.Loop() {
		c.mu.Lock()
		clear(c.cache)
		c.mu.Unlock()
		c.Encode(benchPrompt)
	}
}

func BenchmarkEncodeA1111(b *testing.B) {
	c := benchCLIP(b)
	p := "(" + benchPrompt + ":1.2), [blurry] BREAK (detailed)"
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		c.EncodeA1111(p, A1111Options{})
	}
}

func BenchmarkSentencePieceEncode75(b *testing.B) {
	sp, err := LoadSentencePiece(filepath.Join(goldenDir(b), "data", "t5", "spiece.model"))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(benchPrompt)))
	b.ReportAllocs()
	for b.Loop() {
		sp.Encode(benchPrompt)
	}
}
