// fuzzmerge_test.go fuzzes what an adapter file controls besides names: the
// algorithm and every factor shape (zeros and mismatches included). Parsing,
// planning and merging must fail with an error or succeed with finite
// values, never panic (corpus in testdata/fuzz/FuzzMergeShapes).
package lora

import (
	"math"
	"math/rand/v2"
	"testing"
)

// fuzzParts lists, per algorithm selector, the parts a fuzzed module gets.
var fuzzParts = [][]Part{
	{PartUp, PartDown},
	{PartUp, PartDown, PartMid},
	{PartUp, PartDown, PartDoRA},
	{PartHadaW1A, PartHadaW1B, PartHadaW2A, PartHadaW2B},
	{PartHadaW1A, PartHadaW1B, PartHadaW2A, PartHadaW2B, PartHadaT1, PartHadaT2},
	{PartLokrW1, PartLokrW2A, PartLokrW2B},
	{PartLokrW1A, PartLokrW1B, PartLokrW2},
	{PartLokrW1, PartLokrW2A, PartLokrW2B, PartLokrT2},
	{PartIA3Weight, PartOnInput},
	{PartDiff, PartDiffB},
	{PartGLoRAA1, PartGLoRAA2, PartGLoRAB1, PartGLoRAB2},
	{PartOFTBlocks},
	{PartUp, PartDown, PartMagnitude},
	{PartWNorm, PartBNorm},
}

func FuzzMergeShapes(f *testing.F) {
	f.Add(uint8(0), uint8(0), []byte{2, 6, 9, 8, 2, 1, 1})
	f.Add(uint8(4), uint8(1), []byte{3, 3, 3, 3, 3, 8, 3, 6})
	f.Add(uint8(11), uint8(0), []byte{4, 2, 2})
	f.Fuzz(func(t *testing.T, algo, target uint8, dims []byte) {
		parts := fuzzParts[int(algo)%len(fuzzParts)]
		targets := []string{kConv, kProj, kLinear, kOut}
		mod := "diffusion_model." + targets[int(target)%len(targets)]
		r := rand.New(rand.NewPCG(uint64(algo), uint64(len(dims))))
		src := newMem()
		next := 0
		dim := func() int {
			if next >= len(dims) {
				return 1
			}
			next++
			return int(dims[next-1] % 10)
		}
		for _, p := range parts {
			nd := 1 + dim()%4
			shape := make([]int, nd)
			for i := range shape {
				shape[i] = dim()
			}
			n := numel(shape)
			if n > 4096 {
				return
			}
			src.put(mod+"."+string(p)+suffixOf(p), randn(r, n, 1), shape...)
		}
		src.put(mod+".alpha", []float32{float32(dim())}, 1)
		fl, err := Parse("fuzz.safetensors", src, nil)
		if err != nil {
			return
		}
		fx := newFixture()
		p, err := NewPlan(fx.ckpt, []Adapter{{File: fl, UNet: 0.5}})
		if err != nil {
			return
		}
		for _, key := range p.Keys() {
			orig := fx.orig[key]
			dst := make([]float32, len(orig))
			if err := p.Apply(key, orig, dst); err != nil {
				t.Fatalf("planned %s but Apply failed: %v", key, err)
			}
			for i, v := range dst {
				if math.IsNaN(float64(v)) && !math.IsNaN(float64(orig[i])) {
					// DoRA with a zero column norm divides by eps only, so NaN means a bug.
					t.Fatalf("%s[%d] is NaN", key, i)
				}
			}
		}
	})
}

// suffixOf is what follows the part name in a tensor key.
func suffixOf(p Part) string {
	switch p {
	case PartUp, PartDown, PartMid, PartGLoRAA1, PartGLoRAA2, PartGLoRAB1, PartGLoRAB2:
		return ".weight"
	}
	return ""
}
