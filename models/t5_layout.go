// t5_layout.go enumerates the tensors of a T5 v1.1 encoder checkpoint
// (Hugging Face names: shared.weight, encoder.block.N...) for a config, so
// the demo and benchmarks can make T5 encoders of any size with random
// weights. The feed-forward `wo` is F32 as in the released flan-t5-xl file.
package models

import (
	"fmt"

	"github.com/sdbridge/sdbridge/safetensors"
)

// T5Specs lists the encoder tensors of cfg (gated-gelu feed-forward).
func T5Specs(cfg T5Config, dt safetensors.DType) []safetensors.Spec {
	d, inner := cfg.DModel, cfg.NumHeads*cfg.DKV
	spec := func(name string, dtype safetensors.DType, shape ...int) safetensors.Spec {
		return safetensors.Spec{Name: name, DType: dtype, Shape: shape}
	}
	var out []safetensors.Spec
	for i := range cfg.NumLayers {
		p := fmt.Sprintf("encoder.block.%d.layer.", i)
		for _, n := range []string{"q", "k", "v"} {
			out = append(out, spec(p+"0.SelfAttention."+n+".weight", dt, inner, d))
		}
		out = append(out, spec(p+"0.SelfAttention.o.weight", dt, d, inner))
		if i == 0 {
			out = append(out, spec(p+"0.SelfAttention.relative_attention_bias.weight", dt, cfg.NumBuckets, cfg.NumHeads))
		}
		out = append(out,
			spec(p+"0.layer_norm.weight", dt, d),
			spec(p+"1.DenseReluDense.wi_0.weight", dt, cfg.DFF, d),
			spec(p+"1.DenseReluDense.wi_1.weight", dt, cfg.DFF, d),
			spec(p+"1.DenseReluDense.wo.weight", safetensors.F32, d, cfg.DFF),
			spec(p+"1.layer_norm.weight", dt, d))
	}
	return append(out, spec("encoder.final_layer_norm.weight", dt, d), spec("shared.weight", dt, cfg.VocabSize, d))
}
