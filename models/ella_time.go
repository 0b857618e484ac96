// ella_time.go is ELLA's timestep embedding: diffusers'
// Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0) sinusoid (cos half
// first, computed in float32) followed by TimestepEmbedding (linear_1, SiLU,
// linear_2). It does not apply the SiLU its consumers apply (see ella.go).
package models

import (
	"github.com/sdbridge/sdbridge/nn"
)

// ELLATimeEmbedding maps timesteps to the time condition temb.
type ELLATimeEmbedding struct {
	Linear1  *nn.Linear // Weight [E, Ct] "time_embedding.linear_1"
	Linear2  *nn.Linear // Weight [E, E] "time_embedding.linear_2"
	Channels int        // Ct, the sinusoid width (time_channel)
}

// Forward maps t [T] (float, may be fractional) to temb [T, E].
func (m *ELLATimeEmbedding) Forward(t []float32) *nn.Tensor {
	// Timesteps(time_channel, flip_sin_to_cos=True, downscale_freq_shift=0)
	tf := nn.TimestepEmbedding(t, m.Channels, true, 0, 10000) // [T, Ct]
	h := m.Linear1.Forward(tf)                                // [T, E]
	nn.SiLU(h)                                                // [T, E]
	return m.Linear2.Forward(h)                               // [T, E]
}
