// helpers_test.go holds what the package tests share: an in-memory tensor
// source (checkpoint keys or adapter files built by the tests), a seeded
// random filler, the golden-directory lookup and a relative-L2 comparison.
// It tests nothing by itself.
package lora

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sdbridge/sdbridge/safetensors"
)

// memSource is an in-memory F32 tensor set implementing Source and Keys.
type memSource struct {
	names []string
	info  map[string]*safetensors.Info
	data  map[string][]float32
}

func newMem() *memSource {
	return &memSource{info: map[string]*safetensors.Info{}, data: map[string][]float32{}}
}

// put adds a tensor; data nil means zeros, allocated only when read
// (shape-only use).
func (s *memSource) put(name string, data []float32, shape ...int) *memSource {
	if data != nil && len(data) != numel(shape) {
		panic(fmt.Sprintf("put %s: %d values for shape %v", name, len(data), shape))
	}
	if _, ok := s.info[name]; !ok {
		s.names = append(s.names, name)
	}
	s.info[name] = &safetensors.Info{Name: name, DType: safetensors.F32, Shape: slices.Clone(shape)}
	s.data[name] = data
	return s
}

// put16 adds a tensor stored as F16 (values rounded to half precision).
func (s *memSource) put16(name string, data []float32, shape ...int) *memSource {
	s.put(name, data, shape...)
	s.info[name].DType = safetensors.F16
	return s
}

func (s *memSource) Names() []string { return slices.Clone(s.names) }

func (s *memSource) Lookup(name string) (*safetensors.Info, bool) {
	i, ok := s.info[name]
	return i, ok
}

func (s *memSource) Get(name string) (safetensors.Tensor, error) {
	i, ok := s.info[name]
	if !ok {
		return safetensors.Tensor{}, fmt.Errorf("no tensor %q", name)
	}
	if s.data[name] == nil {
		s.data[name] = make([]float32, numel(i.Shape))
	}
	if i.DType == safetensors.F16 {
		b := make([]byte, 2*len(s.data[name]))
		for k, v := range s.data[name] {
			binary.LittleEndian.PutUint16(b[2*k:], safetensors.F32ToF16(v))
		}
		return safetensors.Tensor{Name: name, DType: i.DType, Shape: i.Shape, Data: b}, nil
	}
	b := make([]byte, 4*len(s.data[name]))
	for k, v := range s.data[name] {
		binary.LittleEndian.PutUint32(b[4*k:], math.Float32bits(v))
	}
	return safetensors.Tensor{Name: name, DType: i.DType, Shape: i.Shape, Data: b}, nil
}

// randn returns n seeded normal values times scale.
func randn(r *rand.Rand, n int, scale float64) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(r.NormFloat64() * scale)
	}
	return out
}

// parse builds a File from an in-memory adapter or fails the test.
func parse(t testing.TB, src *memSource, meta map[string]string) *File {
	t.Helper()
	f, err := Parse("test.safetensors", src, meta)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return f
}

// goldenDir is ../shared/golden from the module root, or $SDBRIDGE_GOLDEN_DIR.
func goldenDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("SDBRIDGE_GOLDEN_DIR"); d != "" {
		return d
	}
	wd, _ := os.Getwd()
	for d := wd; filepath.Dir(d) != d; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, "..", "shared", "golden")
		}
	}
	return filepath.Join("..", "..", "..", "shared", "golden")
}

// goldenFile returns a file of the golden set or skips the test.
func goldenFile(t testing.TB, rel string) string {
	t.Helper()
	p := filepath.Join(goldenDir(t), rel)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("golden file %s absent (%v): set SDBRIDGE_GOLDEN_DIR to the shared golden set", p, err)
	}
	return p
}

// relL2 is ||got-want|| / ||want|| in float64.
func relL2(got []float32, want []float64) float64 {
	var num, den float64
	for i := range got {
		d := float64(got[i]) - want[i]
		num += d * d
		den += want[i] * want[i]
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// writeFile writes src as an F32 .safetensors file with metadata meta.
func writeFile(t testing.TB, path string, src *memSource, meta map[string]string) {
	t.Helper()
	hdr := map[string]any{}
	if meta != nil {
		hdr["__metadata__"] = meta
	}
	var data []byte
	for _, n := range src.names {
		tt, err := src.Get(n)
		if err != nil {
			t.Fatal(err)
		}
		if tt.DType != safetensors.F32 {
			t.Fatalf("writeFile: %s is %s, only F32 is written", n, tt.DType)
		}
		hdr[n] = map[string]any{"dtype": "F32", "shape": tt.Shape, "data_offsets": []int{len(data), len(data) + len(tt.Data)}}
		data = append(data, tt.Data...)
	}
	js, err := json.Marshal(hdr)
	if err != nil {
		t.Fatal(err)
	}
	for len(js)%8 != 0 {
		js = append(js, ' ')
	}
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(js)))
	out = append(append(out, js...), data...)
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}
