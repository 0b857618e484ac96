package safetensors_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/safetensors"
)

// writeSD15 makes a real-size SD1.5 checkpoint (about 2.1 GB of random fp16).
func writeSD15(b *testing.B) string {
	b.Helper()
	p := filepath.Join(b.TempDir(), "sd15-random.safetensors")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	specs := models.SD15().Specs(safetensors.F16)
	w, err := safetensors.NewWriter(f, specs, map[string]string{"format": "pt"})
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	block := make([]byte, 1<<20)
	for i := 0; i < len(block); i += 2 {
		h := safetensors.F32ToF16(float32(r.NormFloat64() * 0.02))
		block[i], block[i+1] = byte(h), byte(h>>8)
	}
	for _, s := range specs {
		n := s.DType.Size()
		for _, d := range s.Shape {
			n *= d
		}
		data := make([]byte, 0, n)
		for len(data) < n {
			data = append(data, block[:min(len(block), n-len(data))]...)
		}
		if err := w.WriteTensor(s.Name, data); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	f.Close()
	return p
}

// BenchmarkOpenSD15 opens and indexes a 2 GB checkpoint and takes a view of
// every tensor; no tensor byte is read.
func BenchmarkOpenSD15(b *testing.B) {
	p := writeSD15(b)
	st, _ := os.Stat(p)
	b.ReportAllocs()
	for b.Loop() {
		f, err := safetensors.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		for _, n := range f.Names() {
			if _, err := f.Get(n); err != nil {
				b.Fatal(err)
			}
		}
		f.Close()
	}
	b.ReportMetric(float64(st.Size())/1e9, "GB-file")
}

// BenchmarkF16ToF32 widens weight-like halves (normal, std 0.02) on one
// core; bytes = output bytes. 1 Mi values is one mid-size SD1.5 conv weight
// (fits the caches); 16 Mi is bound by memory bandwidth.
func BenchmarkF16ToF32(b *testing.B) {
	for _, n := range []int{1 << 20, 16 << 20} {
		b.Run(fmt.Sprintf("n=%dMi", n>>20), func(b *testing.B) {
			src := make([]uint16, n)
			r := rand.New(rand.NewPCG(3, 4))
			for i := range src {
				src[i] = safetensors.F32ToF16(float32(r.NormFloat64() * 0.02))
			}
			dst := make([]float32, n)
			b.SetBytes(int64(4 * n))
			b.ReportAllocs()
			for b.Loop() {
				safetensors.F16ToF32(dst, src)
			}
		})
	}
}

// BenchmarkBF16ToF32 widens 16 Mi bfloat16 values on one core.
func BenchmarkBF16ToF32(b *testing.B) {
	const n = 16 << 20
	src := make([]uint16, n)
	dst := make([]float32, n)
	b.SetBytes(4 * n)
	b.ReportAllocs()
	for b.Loop() {
		safetensors.BF16ToF32(dst, src)
	}
}
