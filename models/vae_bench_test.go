// vae_bench_test.go times the VAE decoder and the CLIP text encoder at real
// SD1.5 widths with random weights (synth.go), to size hardware and track
// the nn kernels: VAE decode of a 32x32 latent (256x256 image) and CLIP
// encode of a CFG pair (batch 2 x 77 tokens; a 1000-token vocabulary, which
// changes nothing but the file size). Skipped with -short.
package models

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// vcRealSize writes the SD1.5 tensors under prefix with random fp16
// weights and opens them.
func vcRealSize(b *testing.B, prefix string) *Weights {
	b.Helper()
	if testing.Short() {
		b.Skip("real-size weights are slow to make; skipped with -short")
	}
	l := SD15()
	l.CLIPVocab = 1000
	var specs []safetensors.Spec
	for _, s := range l.Specs(safetensors.F16) {
		if strings.HasPrefix(s.Name, prefix) {
			specs = append(specs, s)
		}
	}
	path := filepath.Join(b.TempDir(), "real.safetensors")
	if err := WriteRandom(path, specs, 1, nil); err != nil {
		b.Fatal(err)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return NewWeights(f)
}

func BenchmarkVAEDecode256(b *testing.B) {
	v, err := LoadVAEDecoder(vcRealSize(b, "first_stage_model."), 0)
	if err != nil {
		b.Fatal(err)
	}
	latent := nn.New(1, 4, 32, 32) // [1, 4, 32, 32]
	for i := range latent.Data {
		latent.Data[i] = float32(i%7) * 0.1
	}
	b.SetBytes(int64(4 * 3 * 256 * 256))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Decode(latent); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCLIPTextEncode(b *testing.B) {
	m, err := LoadCLIPText(vcRealSize(b, clipLDM), CLIPTextOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ids := make([][]int, 2) // [2, 77]
	for n := range ids {
		ids[n] = make([]int, 77)
		for i := range ids[n] {
			ids[n][i] = (n*31 + i*17) % 1000
		}
	}
	b.SetBytes(int64(4 * 2 * 77 * 768))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Encode(ids); err != nil {
			b.Fatal(err)
		}
	}
}
