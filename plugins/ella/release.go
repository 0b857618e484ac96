// release.go describes the tensor layout of the released ELLA-SD1.5
// connector (ella-sd1.5-tsc-t5xl.safetensors, spec §3): 93 tensors for
// width 768, time embedding 768, sinusoid 320, T5 input 2048, 64 latents
// and 6 perceiver blocks. Benchmarks bind a random connector of exactly
// this shape (models.NewRandomSource) without the 134 MB download.
//
// It does not load or check real files (models.LoadELLA does, strictly).
package ella

import (
	"fmt"

	"github.com/sdbridge/sdbridge/safetensors"
)

// Sizes of the released connector.
const (
	ReleaseWidth        = 768  // W, = SD 1.5 cross-attention dim
	ReleaseTimeEmbed    = 768  // E
	ReleaseTimeChannels = 320  // Ct
	ReleaseInputDim     = 2048 // Din, = FLAN-T5-XL d_model
	ReleaseLatents      = 64   // Q
	ReleaseLayers       = 6    // L
)

// ReleaseSpecs lists the released connector's tensors (F16) in module
// order.
func ReleaseSpecs() []safetensors.Spec {
	return ConnectorSpecs(safetensors.F16, ReleaseWidth, ReleaseTimeEmbed, ReleaseTimeChannels, ReleaseInputDim, ReleaseLatents, ReleaseLayers)
}

// ConnectorSpecs lists the tensors of a connector of any size with the
// official key names: width w, time embedding e, sinusoid channels ct,
// text input din, q latents and the given number of perceiver blocks.
func ConnectorSpecs(dt safetensors.DType, w, e, ct, din, q, layers int) []safetensors.Spec {
	spec := func(name string, shape ...int) safetensors.Spec {
		return safetensors.Spec{Name: name, DType: dt, Shape: shape}
	}
	specs := []safetensors.Spec{
		spec("time_embedding.linear_1.weight", e, ct), spec("time_embedding.linear_1.bias", e),
		spec("time_embedding.linear_2.weight", e, e), spec("time_embedding.linear_2.bias", e),
		spec("connector.latents", q, w),
		spec("connector.time_aware_linear.weight", w, e), spec("connector.time_aware_linear.bias", w),
		spec("connector.proj_in.weight", w, din), spec("connector.proj_in.bias", w),
	}
	for i := range layers {
		p := fmt.Sprintf("connector.perceiver_blocks.%d.", i)
		specs = append(specs,
			spec(p+"attn.in_proj_weight", 3*w, w), spec(p+"attn.in_proj_bias", 3*w),
			spec(p+"attn.out_proj.weight", w, w), spec(p+"attn.out_proj.bias", w),
			spec(p+"ln_1.linear.weight", 2*w, e), spec(p+"ln_1.linear.bias", 2*w),
			spec(p+"ln_2.linear.weight", 2*w, e), spec(p+"ln_2.linear.bias", 2*w),
			spec(p+"ln_ff.linear.weight", 2*w, e), spec(p+"ln_ff.linear.bias", 2*w),
			spec(p+"mlp.c_fc.weight", 4*w, w), spec(p+"mlp.c_fc.bias", 4*w),
			spec(p+"mlp.c_proj.weight", w, 4*w), spec(p+"mlp.c_proj.bias", w),
		)
	}
	return specs
}
