package models

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/sdbridge/sdbridge/safetensors"
)

// The layout generator must reproduce the golden tiny checkpoint exactly:
// the same keys, shapes and dtypes, in the key set the reference ldm code saved.
func TestLayoutMatchesGoldenTiny(t *testing.T) {
	path := filepath.Join("..", "..", "shared", "golden", "models", "sd15-tiny.safetensors")
	f, err := safetensors.Open(path)
	if err != nil {
		t.Skipf("golden tiny checkpoint not available: %v", err)
	}
	defer f.Close()
	specs := Tiny(49408).Specs(safetensors.F16)
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

func TestSD15LayoutSize(t *testing.T) {
	var unet, total int64
	for _, s := range SD15().Specs(safetensors.F16) {
		n := int64(1)
		for _, d := range s.Shape {
			n *= int64(d)
		}
		total += n
		if len(s.Name) > 21 && s.Name[:21] == "model.diffusion_model" {
			unet += n
		}
	}
	// Published parameter counts: U-Net 859.52 M, whole checkpoint about 1.066 G.
	if unet != 859520964 {
		t.Errorf("U-Net parameters = %d, want 859520964", unet)
	}
	if total < 1_060_000_000 || total > 1_070_000_000 {
		t.Errorf("checkpoint parameters = %d, want about 1.066e9", total)
	}
}

func TestWriteRandomRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tiny.safetensors")
	specs := Tiny(64).Specs(safetensors.F16)
	if err := WriteRandom(p, specs, 1, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ac, _ := f.Get("alphas_cumprod")
	v, _ := ac.Float32()
	if v[0] < 0.999 || v[999] > 0.005 || v[999] < 0.004 {
		t.Errorf("alphas_cumprod ends %v .. %v", v[0], v[999])
	}
	w, _ := f.Get("model.diffusion_model.input_blocks.0.0.weight")
	x, _ := w.Float32()
	if slices.Max(x) == slices.Min(x) {
		t.Error("random weights are constant")
	}
}

// The ControlNet layout must reproduce the golden tiny ControlNet exactly.
func TestControlNetLayoutMatchesGolden(t *testing.T) {
	path := filepath.Join("..", "..", "shared", "golden", "models", "controlnet-tiny.safetensors")
	f, err := safetensors.Open(path)
	if err != nil {
		t.Skipf("golden tiny ControlNet not available: %v", err)
	}
	defer f.Close()
	specs := Tiny(49408).ControlNetSpecs(safetensors.F16, "control_model.")
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
