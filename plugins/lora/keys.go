// keys.go splits one tensor name of a LoRA-family file into its module name
// and its part ("lora_up.weight", "hada_w1_a", "alpha", ...), by stripping the
// longest known part suffix (spec checkpoints-and-lora.md §9). Every naming
// family (kohya, LyCORIS, PEFT, old diffusers, ComfyUI) ends its tensors in
// one of these suffixes.
//
// It never splits a module name on '_' and never decides what a module
// targets: that is the forward lookup of aliases.go. A bare ".weight" is
// reported as PartIA3Weight; only the presence of "on_input" on the same
// module makes it an (IA)^3 vector (file.go checks that).
package lora

import "strings"

// Part is the canonical role of one tensor of a module.
type Part string

// Parts, named after the kohya / LyCORIS spelling.
const (
	PartUp        Part = "lora_up"   // [out, r(, 1, 1)]; PEFT lora_B, diffusers .lora.up
	PartDown      Part = "lora_down" // [r, in(, kh, kw)]; PEFT lora_A
	PartMid       Part = "lora_mid"  // Tucker core [r, r, kh, kw]
	PartAlpha     Part = "alpha"
	PartScale     Part = "scale" // explicit scale overriding alpha/rank
	PartDoRA      Part = "dora_scale"
	PartMagnitude Part = "lora_magnitude_vector" // PEFT DoRA, 1-D [out]
	PartHadaW1A   Part = "hada_w1_a"
	PartHadaW1B   Part = "hada_w1_b"
	PartHadaW2A   Part = "hada_w2_a"
	PartHadaW2B   Part = "hada_w2_b"
	PartHadaT1    Part = "hada_t1"
	PartHadaT2    Part = "hada_t2"
	PartLokrW1    Part = "lokr_w1"
	PartLokrW1A   Part = "lokr_w1_a"
	PartLokrW1B   Part = "lokr_w1_b"
	PartLokrW2    Part = "lokr_w2"
	PartLokrW2A   Part = "lokr_w2_a"
	PartLokrW2B   Part = "lokr_w2_b"
	PartLokrT1    Part = "lokr_t1"
	PartLokrT2    Part = "lokr_t2"
	PartDiff      Part = "diff"
	PartDiffB     Part = "diff_b"
	PartWNorm     Part = "w_norm"
	PartBNorm     Part = "b_norm"
	PartOnInput   Part = "on_input"
	PartIA3Weight Part = "weight" // (IA)^3 vector, only together with on_input
	PartGLoRAA1   Part = "a1"
	PartGLoRAA2   Part = "a2"
	PartGLoRAB1   Part = "b1"
	PartGLoRAB2   Part = "b2"
	PartOFTBlocks Part = "oft_blocks"
	PartRescale   Part = "rescale"
)

// partSuffixes lists every accepted spelling. ParseKey picks the longest
// match, so ".lora_up.weight" wins over the bare ".weight".
var partSuffixes = []struct {
	suffix string
	part   Part
}{
	{".lora_up.weight", PartUp},
	{".lora_down.weight", PartDown},
	{".lora_mid.weight", PartMid},
	{".lora_B.weight", PartUp},
	{".lora_A.weight", PartDown},
	{".lora_B.default.weight", PartUp},
	{".lora_A.default.weight", PartDown},
	{".lora.up.weight", PartUp},
	{".lora.down.weight", PartDown},
	{"_lora.up.weight", PartUp}, // old diffusers attention processors: to_q_lora.up.weight
	{"_lora.down.weight", PartDown},
	{".lora_linear_layer.up.weight", PartUp},
	{".lora_linear_layer.down.weight", PartDown},
	{".alpha", PartAlpha},
	{".scale", PartScale},
	{".dora_scale", PartDoRA},
	{".lora_magnitude_vector", PartMagnitude},
	{".lora_magnitude_vector.weight", PartMagnitude},
	{".lora_magnitude_vector.default", PartMagnitude},
	{".lora_magnitude_vector.default.weight", PartMagnitude},
	{".hada_w1_a", PartHadaW1A},
	{".hada_w1_b", PartHadaW1B},
	{".hada_w2_a", PartHadaW2A},
	{".hada_w2_b", PartHadaW2B},
	{".hada_t1", PartHadaT1},
	{".hada_t2", PartHadaT2},
	{".lokr_w1", PartLokrW1},
	{".lokr_w1_a", PartLokrW1A},
	{".lokr_w1_b", PartLokrW1B},
	{".lokr_w2", PartLokrW2},
	{".lokr_w2_a", PartLokrW2A},
	{".lokr_w2_b", PartLokrW2B},
	{".lokr_t1", PartLokrT1},
	{".lokr_t2", PartLokrT2},
	{".diff", PartDiff},
	{".diff_b", PartDiffB},
	{".w_norm", PartWNorm},
	{".b_norm", PartBNorm},
	{".on_input", PartOnInput},
	{".weight", PartIA3Weight},
	{".a1.weight", PartGLoRAA1},
	{".a2.weight", PartGLoRAA2},
	{".b1.weight", PartGLoRAB1},
	{".b2.weight", PartGLoRAB2},
	{".oft_blocks", PartOFTBlocks},
	{".rescale", PartRescale},
}

// ParseKey splits a LoRA tensor name into module and part by the longest
// known part suffix. ok is false when no suffix matches or nothing is left
// for the module name. module + suffix == key always holds when ok.
func ParseKey(key string) (module string, part Part, ok bool) {
	best := -1
	for i, s := range partSuffixes {
		if strings.HasSuffix(key, s.suffix) {
			if best < 0 || len(s.suffix) > len(partSuffixes[best].suffix) {
				best = i
			}
		}
	}
	// A name that is only a suffix (".lora_up.weight") has no module; do
	// not fall back to a shorter suffix and invent module ".lora_up".
	if best < 0 || len(partSuffixes[best].suffix) == len(key) {
		return "", "", false
	}
	return key[:len(key)-len(partSuffixes[best].suffix)], partSuffixes[best].part, true
}
