// unet_fake_test.go: test fixtures for the U-Net and ControlNet tests: a
// shapes-only Source (config inference on real SD 1.5 shapes without
// allocating a byte), spec-list editing helpers, and tiny random models
// written with WriteRandom.
package models

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/safetensors"
)

// shapeSource answers Lookup and Names from specs; Get fails (inference
// must not read data).
type shapeSource struct {
	infos map[string]*safetensors.Info
	names []string
}

func newShapeSource(specs []safetensors.Spec) *shapeSource {
	s := &shapeSource{infos: map[string]*safetensors.Info{}}
	for _, sp := range specs {
		s.infos[sp.Name] = &safetensors.Info{Name: sp.Name, DType: sp.DType, Shape: sp.Shape}
		s.names = append(s.names, sp.Name)
	}
	return s
}

func (s *shapeSource) Get(name string) (safetensors.Tensor, error) {
	return safetensors.Tensor{}, fmt.Errorf("shapeSource has no data (%s)", name)
}

func (s *shapeSource) Lookup(name string) (*safetensors.Info, bool) {
	i, ok := s.infos[name]
	return i, ok
}

func (s *shapeSource) Names() []string { return s.names }

// unetSpecs is the U-Net part of a layout's checkpoint specs.
func unetSpecs(l Layout, dt safetensors.DType) []safetensors.Spec {
	var out []safetensors.Spec
	for _, s := range l.Specs(dt) {
		if strings.HasPrefix(s.Name, "model.diffusion_model.") {
			out = append(out, s)
		}
	}
	return out
}

// controlNetSpecs is an ldm ControlNet of layout l under prefix p: the
// U-Net's time_embed, input_blocks and middle_block, the hint encoder
// (SD 1.5 widths) and the zero convs.
func controlNetSpecs(l Layout, dt safetensors.DType, p string) []safetensors.Spec {
	var out []safetensors.Spec
	for _, s := range unetSpecs(l, dt) {
		k := strings.TrimPrefix(s.Name, "model.diffusion_model.")
		if strings.HasPrefix(k, "time_embed.") || strings.HasPrefix(k, "input_blocks.") || strings.HasPrefix(k, "middle_block.") {
			out = append(out, safetensors.Spec{Name: p + k, DType: dt, Shape: s.Shape})
		}
	}
	add := func(k string, shape ...int) {
		out = append(out, safetensors.Spec{Name: p + k, DType: dt, Shape: shape})
	}
	widths := []int{3, 16, 16, 32, 32, 96, 96, 256, l.ModelChannels}
	for k := range 8 {
		add(fmt.Sprintf("input_hint_block.%d.weight", 2*k), widths[k+1], widths[k], 3, 3)
		add(fmt.Sprintf("input_hint_block.%d.bias", 2*k), widths[k+1])
	}
	skips := []int{l.ModelChannels}
	for lvl, m := range l.ChannelMult {
		for range l.NumResBlocks {
			skips = append(skips, m*l.ModelChannels)
		}
		if lvl != len(l.ChannelMult)-1 {
			skips = append(skips, m*l.ModelChannels)
		}
	}
	for i, ch := range skips {
		add(fmt.Sprintf("zero_convs.%d.0.weight", i), ch, ch, 1, 1)
		add(fmt.Sprintf("zero_convs.%d.0.bias", i), ch)
	}
	mid := skips[len(skips)-1]
	add("middle_block_out.0.weight", mid, mid, 1, 1)
	add("middle_block_out.0.bias", mid)
	return out
}

// withoutSpec drops the spec named name (which must exist).
func withoutSpec(t *testing.T, specs []safetensors.Spec, name string) []safetensors.Spec {
	t.Helper()
	i := slices.IndexFunc(specs, func(s safetensors.Spec) bool { return s.Name == name })
	if i < 0 {
		t.Fatalf("fixture has no %q", name)
	}
	return slices.Delete(slices.Clone(specs), i, i+1)
}

// withShape replaces the shape of name (which must exist).
func withShape(t *testing.T, specs []safetensors.Spec, name string, shape ...int) []safetensors.Spec {
	t.Helper()
	out := slices.Clone(specs)
	i := slices.IndexFunc(out, func(s safetensors.Spec) bool { return s.Name == name })
	if i < 0 {
		t.Fatalf("fixture has no %q", name)
	}
	out[i].Shape = shape
	return out
}

// withSpec appends a tensor.
func withSpec(specs []safetensors.Spec, name string, shape ...int) []safetensors.Spec {
	return append(slices.Clone(specs), safetensors.Spec{Name: name, DType: safetensors.F32, Shape: shape})
}

// renamed maps every spec name through f.
func renamed(specs []safetensors.Spec, f func(string) string) []safetensors.Spec {
	out := slices.Clone(specs)
	for i := range out {
		out[i].Name = f(out[i].Name)
	}
	return out
}

// writeTiny writes specs with random weights (seeded) to a temp file and
// opens it; the file is closed at the end of the test.
func writeTiny(t testing.TB, specs []safetensors.Spec, seed uint64) *safetensors.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "model.safetensors")
	if err := WriteRandom(path, specs, seed, nil); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
