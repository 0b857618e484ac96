// random_source.go is a Source that makes random tensors on demand for a list
// of specs (no file): `sdbridge bench` binds real-size SD1.5 models from it.
// Values follow synth.go's scheme and are stored as F32 so binding does no
// dtype conversion. Each Get allocates the tensor's bytes afresh.
package models

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"slices"

	"github.com/sdbridge/sdbridge/safetensors"
)

// RandomSource serves random tensors with the shapes of specs.
type RandomSource struct {
	seed  uint64
	infos map[string]*safetensors.Info
	names []string
}

// NewRandomSource indexes specs (their dtypes are ignored: tensors are F32).
func NewRandomSource(specs []safetensors.Spec, seed uint64) *RandomSource {
	r := &RandomSource{seed: seed, infos: map[string]*safetensors.Info{}}
	for _, s := range specs {
		dt := safetensors.F32
		if s.DType == safetensors.I64 {
			dt = safetensors.I64
		}
		info := &safetensors.Info{Name: s.Name, DType: dt, Shape: slices.Clone(s.Shape)}
		info.End = int64(info.Numel() * dt.Size())
		r.infos[s.Name] = info
		r.names = append(r.names, s.Name)
	}
	return r
}

// Names lists the tensors in spec order.
func (r *RandomSource) Names() []string { return r.names }

// Lookup returns a tensor's shape and dtype.
func (r *RandomSource) Lookup(name string) (*safetensors.Info, bool) {
	i, ok := r.infos[name]
	return i, ok
}

// Get makes the tensor's values (deterministic for a seed and name).
func (r *RandomSource) Get(name string) (safetensors.Tensor, error) {
	info, ok := r.infos[name]
	if !ok {
		return safetensors.Tensor{}, fmt.Errorf("random source: tensor %q not found", name)
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	g := rng(r.seed ^ h.Sum64())
	n := info.Numel()
	vals := randomValues(&g, safetensors.Spec{Name: name, DType: info.DType, Shape: info.Shape}, n)
	data := make([]byte, 0, n*info.DType.Size())
	for _, v := range vals {
		if info.DType == safetensors.I64 {
			data = binary.LittleEndian.AppendUint64(data, uint64(int64(v)))
		} else {
			data = binary.LittleEndian.AppendUint32(data, math.Float32bits(float32(v)))
		}
	}
	return safetensors.Tensor{Name: name, DType: info.DType, Shape: info.Shape, Data: data}, nil
}
