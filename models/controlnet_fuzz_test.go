// controlnet_fuzz_test.go fuzzes ControlNet form detection and the diffusers
// renaming with untrusted tensor names: never a panic, never a table sized
// by a number read from a name.
package models

import (
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/safetensors"
)

func FuzzControlNetWeights(f *testing.F) {
	f.Add("controlnet_cond_embedding.conv_in.weight\ndown_blocks.0.resnets.0.norm1.weight\ndown_blocks.3.resnets.1.conv2.bias")
	f.Add("controlnet_cond_embedding.conv_in.weight\ndown_blocks.999999999999.resnets.0.x")
	f.Add("controlnet_cond_embedding.conv_in.weight\ndown_blocks.0.resnets.-1.x\ncontrolnet_cond_embedding.blocks.7.weight")
	f.Add("control_model.zero_convs.0.0.weight\ncontrol_model.input_blocks.0.0.weight")
	f.Add("zero_convs.0.0.weight\n..\n.")
	f.Fuzz(func(t *testing.T, names string) {
		var specs []safetensors.Spec
		seen := map[string]bool{}
		for _, n := range strings.Split(names, "\n") {
			if seen[n] || len(specs) > 200 {
				continue
			}
			seen[n] = true
			specs = append(specs, safetensors.Spec{Name: n, DType: safetensors.F16, Shape: []int{4, 4, 3, 3}})
		}
		src := newShapeSource(specs)
		w, _, err := ControlNetWeights(src)
		if err != nil {
			return
		}
		// Inference reads shapes only; it must fail cleanly or succeed.
		_, _ = InferControlNetConfig(w)
		if len(w.src.Names()) != len(specs) {
			t.Errorf("renamed view has %d names for %d tensors", len(w.src.Names()), len(specs))
		}
	})
}
