// aliases.go builds the forward lookup from every LoRA module spelling to the
// checkpoint module it patches, from the checkpoint's own keys (spec
// checkpoints-and-lora.md §9, the approach of ComfyUI comfy/lora.py
// model_lora_keys_unet / model_lora_keys_clip, extended with the PEFT and
// ldm-style kohya names ComfyUI lacks).
//
// Names are only ever built (ldm -> every dialect), never parsed back, so
// underscores inside tails such as proj_in, to_out_0 or time_emb_proj cannot
// be mis-split. It does not touch tensor data and does not decide whether a
// LoRA suits the model (arch.go) or fits a tensor (check.go).
package lora

import (
	"slices"
	"strings"

	"github.com/sdbridge/sdbridge/safetensors"
)

// Checkpoint prefixes of the patchable components.
const (
	UNetPrefix = "model.diffusion_model."
	TEPrefix   = "cond_stage_model.transformer.text_model."
	// teOldPrefix is the text encoder without "text_model." (old transformers).
	teOldPrefix = "cond_stage_model.transformer."
)

// Keys is what the lookup needs from a checkpoint: its tensor names and
// shapes. *safetensors.File, a sharded set and models.Source satisfy it.
type Keys interface {
	Names() []string
	Lookup(name string) (*safetensors.Info, bool)
}

// Component says which strength applies to a checkpoint module.
type Component int

const (
	UNet Component = iota
	TextEncoder
)

func (c Component) String() string {
	if c == TextEncoder {
		return "text encoder"
	}
	return "U-Net"
}

// CkptModule is a checkpoint module that adapters may patch: the checkpoint key
// without its ".weight"/".bias".
type CkptModule struct {
	Name      string // e.g. "model.diffusion_model.input_blocks.1.1.proj_in"
	Component Component
	Local     string // ldm name under the component prefix, e.g. "input_blocks.1.1.proj_in"
	Weight    []int  // shape of Name+".weight", nil if absent
	Bias      []int  // shape of Name+".bias", nil if absent
}

// Index is the forward lookup of one checkpoint.
type Index struct {
	modules map[string]*CkptModule // by checkpoint module name
	alias   map[string]*CkptModule // every accepted LoRA module spelling
	// ambiguous holds aliases built for two different modules; they resolve
	// to nothing (never seen on SD 1.5; kept so a strange model cannot make
	// a LoRA patch the wrong tensor).
	ambiguous map[string]bool
	// maxTransformerBlock is the highest transformer_blocks index in the
	// U-Net (0 for SD 1.x), used to spot SDXL LoRAs.
	maxTransformerBlock int
	contextWidth        int // in-width of an attn2.to_k (768 for SD 1.x), 0 if unknown
	teWidth             int // in-width of a text encoder q_proj (768), 0 if unknown
}

// us replaces every '.' with '_' (kohya module naming).
func us(s string) string { return strings.ReplaceAll(s, ".", "_") }

// NewIndex builds the lookup from a checkpoint's keys.
func NewIndex(ckpt Keys) *Index {
	ix := &Index{modules: map[string]*CkptModule{}, alias: map[string]*CkptModule{}, ambiguous: map[string]bool{}}
	names := ckpt.Names()
	slices.Sort(names)
	for _, key := range names {
		var mod string
		var isBias bool
		switch {
		case strings.HasSuffix(key, ".weight"):
			mod = strings.TrimSuffix(key, ".weight")
		case strings.HasSuffix(key, ".bias"):
			mod, isBias = strings.TrimSuffix(key, ".bias"), true
		default:
			continue
		}
		var comp Component
		var local string
		switch {
		case strings.HasPrefix(mod, UNetPrefix):
			comp, local = UNet, strings.TrimPrefix(mod, UNetPrefix)
		case strings.HasPrefix(mod, teOldPrefix):
			comp, local = TextEncoder, strings.TrimPrefix(strings.TrimPrefix(mod, teOldPrefix), "text_model.")
		default:
			continue
		}
		info, _ := ckpt.Lookup(key)
		m := ix.modules[mod]
		if m == nil {
			m = &CkptModule{Name: mod, Component: comp, Local: local}
			ix.modules[mod] = m
			ix.addAliases(m)
		}
		var shape []int
		if info != nil {
			shape = info.Shape
		}
		if isBias {
			m.Bias = shape
		} else {
			m.Weight = shape
			ix.noteWidths(m)
		}
	}
	return ix
}

// noteWidths records the structural facts arch.go compares against.
func (ix *Index) noteWidths(m *CkptModule) {
	if m.Component == UNet {
		if n, ok := transformerBlockIndex(m.Local); ok && n > ix.maxTransformerBlock {
			ix.maxTransformerBlock = n
		}
		if strings.HasSuffix(m.Local, ".attn2.to_k") && len(m.Weight) == 2 && ix.contextWidth == 0 {
			ix.contextWidth = m.Weight[1]
		}
		return
	}
	if strings.HasSuffix(m.Local, ".self_attn.q_proj") && len(m.Weight) == 2 && ix.teWidth == 0 {
		ix.teWidth = m.Weight[1]
	}
}

// transformerBlockIndex finds "transformer_blocks.N" (or _N) in a name.
func transformerBlockIndex(name string) (int, bool) {
	for _, sep := range []string{"transformer_blocks.", "transformer_blocks_"} {
		i := strings.Index(name, sep)
		if i < 0 {
			continue
		}
		s := name[i+len(sep):]
		n, j := 0, 0
		for j < len(s) && s[j] >= '0' && s[j] <= '9' && j < 6 {
			n = n*10 + int(s[j]-'0')
			j++
		}
		if j > 0 {
			return n, true
		}
	}
	return 0, false
}

// Aliases lists every LoRA module spelling that resolves to m.
func Aliases(m *CkptModule) []string {
	if m.Component == TextEncoder {
		t := m.Local
		out := []string{
			"lora_te_text_model_" + us(t),
			"lora_te1_text_model_" + us(t), // SD 1.5 files converted by diffusers convert_state_dict_to_kohya
			"lycoris_te_text_model_" + us(t),
			"text_encoder.text_model." + t,
			"text_encoder.base_model.model.text_model." + t,
			"base_model.model.text_model." + t,                 // raw PEFT on CLIPTextModel
			"text_encoders.clip_l.transformer.text_model." + t, // ComfyUI extractor
			"cond_stage_model.transformer.text_model." + t,
			"transformer.text_model." + t,
		}
		// Old diffusers text-encoder attention processors: self_attn.to_q_lora.
		for _, p := range [][2]string{{"q_proj", "to_q"}, {"k_proj", "to_k"}, {"v_proj", "to_v"}, {"out_proj", "to_out"}} {
			if head, ok := strings.CutSuffix(t, ".self_attn."+p[0]); ok {
				out = append(out, "text_encoder.text_model."+head+".self_attn."+p[1])
			}
		}
		return out
	}
	l := m.Local
	out := []string{
		"lora_unet_" + us(l),
		"diffusion_model." + l, // ComfyUI extractor
		"model.diffusion_model." + l,
	}
	d, ok := LDMToDiffusers(l)
	if !ok {
		return out
	}
	out = append(out,
		"lora_unet_"+us(d),
		"lycoris_"+us(d),
		"oft_unet_"+us(d),
		"unet."+d,
		"base_model.model."+d,
		"unet.base_model.model."+d,
	)
	// Old diffusers attention processors: attn1.processor.to_q, .to_out (no .0).
	for _, p := range []string{"to_q", "to_k", "to_v", "to_out.0"} {
		if strings.HasSuffix(d, ".attn1."+p) || strings.HasSuffix(d, ".attn2."+p) {
			head := d[:len(d)-len(p)]
			out = append(out, "unet."+head+"processor."+strings.TrimSuffix(p, ".0"))
			if p == "to_out.0" {
				out = append(out, "unet."+head+"processor.to_out.0")
			}
		}
	}
	return out
}

func (ix *Index) addAliases(m *CkptModule) {
	for _, a := range Aliases(m) {
		if prev, ok := ix.alias[a]; ok && prev != m {
			ix.ambiguous[a] = true
			continue
		}
		ix.alias[a] = m
	}
}

// Resolve returns the checkpoint module a LoRA module name patches.
func (ix *Index) Resolve(loraModule string) (*CkptModule, bool) {
	if ix.ambiguous[loraModule] {
		return nil, false
	}
	m, ok := ix.alias[loraModule]
	return m, ok
}
