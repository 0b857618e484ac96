package models

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/sdbridge/sdbridge/safetensors"
)

// The T5 layout reproduces the golden tiny T5 file from its config.json.
func TestT5LayoutMatchesGolden(t *testing.T) {
	dir := filepath.Join("..", "..", "shared", "golden", "models", "t5-tiny")
	cfg, err := ReadT5Config(dir)
	if err != nil {
		t.Skipf("golden tiny T5 not available: %v", err)
	}
	f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	specs := T5Specs(cfg, safetensors.F16)
	if len(specs) != len(f.Tensors) {
		t.Errorf("layout has %d tensors, golden file %d", len(specs), len(f.Tensors))
	}
	for _, s := range specs {
		info, ok := f.Lookup(s.Name)
		if !ok {
			t.Errorf("layout key %q not in the golden file", s.Name)
			continue
		}
		if !slices.Equal(info.Shape, s.Shape) || info.DType != s.DType {
			t.Errorf("%s: layout %s%v, golden %s%v", s.Name, s.DType, s.Shape, info.DType, info.Shape)
		}
	}
}
