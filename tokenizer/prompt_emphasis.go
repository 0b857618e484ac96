// prompt_emphasis.go applies A1111 token weights to text-encoder output, as
// A1111's emphasis modes do after the transformer:
//
//	"Original": z *= weight (per token, broadcast over channels), then
//	            z *= mean(z before) / mean(z after) — means over the whole
//	            window, so the overall magnitude is kept;
//	"No norm":  z *= weight only.
//
// Means are accumulated in float64 (torch sums float32 pairwise; the
// difference is rounding-level). It deliberately knows nothing of tensors or
// models: it works on a plain row-major [tokens, dim] slice, one 77-token
// window at a time (A1111 takes the mean over the batch of the window, which
// for one prompt is the same).
package tokenizer

import "fmt"

// EmphasisMode selects how weights are applied.
type EmphasisMode int

// Emphasis modes of A1111 ("None" = parse no syntax: A1111Options.NoEmphasis).
const (
	EmphasisOriginal EmphasisMode = iota
	EmphasisNoNorm
)

// ApplyEmphasis scales z ([len(weights), dim], row-major) in place.
func ApplyEmphasis(z []float32, weights []float32, dim int, mode EmphasisMode) error {
	if dim <= 0 || len(z) != len(weights)*dim {
		return fmt.Errorf("emphasis: z has %d values, want %d tokens x %d", len(z), len(weights), dim)
	}
	var before float64
	if mode == EmphasisOriginal {
		before = meanOf(z)
	}
	for t, w := range weights { // z[t, :] *= w
		if w == 1 {
			continue
		}
		row := z[t*dim : (t+1)*dim]
		for i := range row {
			row[i] *= w
		}
	}
	if mode != EmphasisOriginal {
		return nil
	}
	after := meanOf(z)
	if after == 0 {
		return nil // all-zero output or weights: nothing to renormalise
	}
	s := float32(before / after)
	for i := range z {
		z[i] *= s
	}
	return nil
}

func meanOf(z []float32) float64 {
	var s float64
	for _, v := range z {
		s += float64(v)
	}
	return s / float64(len(z))
}
