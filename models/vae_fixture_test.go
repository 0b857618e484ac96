// vae_fixture_test.go makes small VAE and CLIP text-encoder files for the
// vae_*/clip_* tests: keys and shapes come from the SD1.5 layout generator
// (sd15layout.go), values are deterministic pseudo-random numbers seeded by
// the key without its prefix, so the same tensor in two layouts holds the
// same values. It writes real safetensors files; no golden data is used.
package models

import (
	"encoding/binary"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/safetensors"
)

// vcTensor is one fixture tensor: a name, a shape and float32 or int64 values.
type vcTensor struct {
	Name  string
	Shape []int
	F32   []float32
	I64   []int64 // set for position_ids
}

// vcLayout is a small SD1.5-structured layout: a two-level VAE (factor 2)
// and a three-layer CLIP with 2 heads of 64 over 8 positions.
func vcLayout() Layout {
	l := Tiny(100)
	l.VAEChMult = []int{1, 2}
	l.VAEResBlock = 1
	l.CLIPCtx = 8
	l.CLIPFF = 64
	return l
}

// vcComponent returns the tensors under prefix of the layout, with the
// prefix removed from their names.
func vcComponent(prefix string) []vcTensor {
	var out []vcTensor
	for _, s := range vcLayout().Specs(safetensors.F32) {
		tail, ok := strings.CutPrefix(s.Name, prefix)
		if !ok {
			continue
		}
		t := vcTensor{Name: tail, Shape: slices.Clone(s.Shape)}
		if s.DType == safetensors.I64 {
			for i := range numelOf(s.Shape) {
				t.I64 = append(t.I64, int64(i))
			}
		} else {
			t.F32 = vcValues(tail, s.Shape)
		}
		out = append(out, t)
	}
	return out
}

func numelOf(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// vcValues fills a tensor: uniform in ±1/sqrt(fan_in) for weights of rank
// 2 and up, 1±0.2 for norm scales, ±0.2 for other vectors.
func vcValues(name string, shape []int) []float32 {
	h := fnv.New64a()
	h.Write([]byte(name))
	r := rand.New(rand.NewPCG(h.Sum64(), 7))
	n := numelOf(shape)
	scale, offset := 0.2, 0.0
	if len(shape) >= 2 {
		scale = 1 / math.Sqrt(float64(n/shape[0]))
	} else if strings.HasSuffix(name, ".weight") {
		offset = 1
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(offset + scale*(2*r.Float64()-1))
	}
	return v
}

// vcPrefixed returns ts with p put in front of every name.
func vcPrefixed(p string, ts []vcTensor) []vcTensor {
	out := make([]vcTensor, len(ts))
	for i, t := range ts {
		t.Name = p + t.Name
		out[i] = t
	}
	return out
}

// vcEdit returns a copy of ts passed through f; f returns false to drop a tensor.
func vcEdit(ts []vcTensor, f func(t *vcTensor) bool) []vcTensor {
	var out []vcTensor
	for _, t := range ts {
		t.Shape = slices.Clone(t.Shape)
		if f(&t) {
			out = append(out, t)
		}
	}
	return out
}

// vcOpen writes ts to a temporary safetensors file and opens it.
func vcOpen(t testing.TB, ts []vcTensor) *safetensors.File {
	t.Helper()
	var data []safetensors.TensorData
	for _, x := range ts {
		td := safetensors.TensorData{Spec: safetensors.Spec{Name: x.Name, Shape: x.Shape}}
		if x.I64 != nil {
			td.DType = safetensors.I64
			td.Data = make([]byte, 8*len(x.I64))
			for i, v := range x.I64 {
				binary.LittleEndian.PutUint64(td.Data[8*i:], uint64(v))
			}
		} else {
			td.DType = safetensors.F32
			td.Data = make([]byte, 4*len(x.F32))
			for i, v := range x.F32 {
				binary.LittleEndian.PutUint32(td.Data[4*i:], math.Float32bits(v))
			}
		}
		data = append(data, td)
	}
	path := filepath.Join(t.TempDir(), "fixture.safetensors")
	if err := safetensors.WriteFile(path, data, nil); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
