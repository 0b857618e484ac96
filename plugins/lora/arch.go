// arch.go refuses, as a whole, an adapter made for another architecture
// (SDXL, SD 2.x) before any module is resolved (spec §10.2), so a LoRA whose
// names partly exist in SD 1.5 (output_blocks.4.1 exists in both) is never
// partly applied. Evidence, strongest first: names only other architectures
// have (lora_te2_, OpenCLIP resblocks, label_emb, transformer_blocks beyond
// the checkpoint's depth), the cross-attention / text-encoder input widths
// compared with the checkpoint's own, then trainer metadata (A1111
// network.py detect_version).
//
// It does not check individual shapes (check.go) and does not look at
// tensor data.
package lora

import (
	"fmt"
	"strings"
)

// archByContext names the architecture whose U-Net cross-attention takes
// this context width.
func archByContext(w int) string {
	switch w {
	case 768:
		return "SD 1.x"
	case 1024:
		return "SD 2.x"
	case 2048:
		return "SDXL"
	}
	return fmt.Sprintf("a model with %d-wide cross-attention context", w)
}

// archByTE names the architecture whose text encoder has this width.
func archByTE(w int) string {
	switch w {
	case 768:
		return "SD 1.x (CLIP ViT-L)"
	case 1024:
		return "SD 2.x (OpenCLIP ViT-H)"
	case 1280:
		return "SDXL (OpenCLIP ViT-bigG)"
	}
	return fmt.Sprintf("a model with a %d-wide text encoder", w)
}

// nameHints are module-name fragments that only other architectures have.
var nameHints = []struct{ frag, arch string }{
	{"lora_te2_", "SDXL"},
	{"text_encoder_2.", "SDXL"},
	{"text_encoders.clip_g.", "SDXL"},
	{"conditioner.embedders", "SDXL"},
	{"label_emb", "SDXL"},
	{"add_embedding", "SDXL"},
	{"resblocks", "SD 2.x (OpenCLIP text encoder)"},
	{"text_encoders.clip_h.", "SD 2.x"},
	{"cond_stage_model.model.", "SD 2.x (OpenCLIP text encoder)"},
}

// checkArch returns an ErrArchitecture error naming the adapter's
// architecture when it is not the checkpoint's.
func (ix *Index) checkArch(f *File) error {
	refuse := func(arch, why string) error {
		return fmt.Errorf("%w: %s is an adapter for %s, the checkpoint is %s: %s", ErrArchitecture, f.Path, arch,
			archByContext(ix.contextWidth), why)
	}
	for _, m := range f.Modules {
		for _, h := range nameHints {
			if strings.Contains(m.Name, h.frag) {
				return refuse(h.arch, fmt.Sprintf("module %q", m.Name))
			}
		}
		if n, ok := transformerBlockIndex(m.Name); ok && n > ix.maxTransformerBlock {
			return refuse("SDXL", fmt.Sprintf("module %q has transformer_blocks.%d, the checkpoint has at most %d", m.Name, n, ix.maxTransformerBlock))
		}
	}
	for _, m := range f.Modules {
		w := inWidth(m)
		if w == 0 {
			continue
		}
		n := m.Name
		switch {
		case ix.contextWidth > 0 && strings.Contains(n, "attn2") && (hasTail(n, "to_k") || hasTail(n, "to_v")):
			if w != ix.contextWidth {
				return refuse(archByContext(w), fmt.Sprintf("module %q takes %d-wide context, the checkpoint's cross-attention takes %d", n, w, ix.contextWidth))
			}
		case ix.teWidth > 0 && isTEName(n) && (hasTail(n, "q_proj") || hasTail(n, "k_proj") || hasTail(n, "v_proj")):
			if w != ix.teWidth {
				return refuse(archByTE(w), fmt.Sprintf("module %q is %d wide, the checkpoint's text encoder %d", n, w, ix.teWidth))
			}
		}
	}
	md := f.Metadata
	switch {
	case strings.HasPrefix(md["ss_base_model_version"], "sdxl_"):
		return refuse("SDXL", fmt.Sprintf("metadata ss_base_model_version = %q", md["ss_base_model_version"]))
	case md["ss_v2"] == "True":
		return refuse("SD 2.x", `metadata ss_v2 = "True"`)
	case strings.HasPrefix(md["modelspec.architecture"], "stable-diffusion-xl"):
		return refuse("SDXL", fmt.Sprintf("metadata modelspec.architecture = %q", md["modelspec.architecture"]))
	case strings.HasPrefix(md["modelspec.architecture"], "stable-diffusion-v2"):
		return refuse("SD 2.x", fmt.Sprintf("metadata modelspec.architecture = %q", md["modelspec.architecture"]))
	}
	return nil
}

// hasTail reports whether name ends in tail as a whole name component
// (after '.' or '_').
func hasTail(name, tail string) bool {
	if !strings.HasSuffix(name, tail) || len(name) == len(tail) {
		return false
	}
	c := name[len(name)-len(tail)-1]
	return c == '.' || c == '_'
}

// isTEName reports whether a module name is spelled as a text-encoder module.
func isTEName(n string) bool {
	for _, p := range []string{"lora_te", "text_encoder", "cond_stage_model.", "transformer.text_model.", "lycoris_te"} {
		if strings.HasPrefix(n, p) {
			return true
		}
	}
	return false
}

// inWidth is the input width an adapter module expects (0 when unknown):
// what the module's weight multiplies, per output row, for a linear layer.
func inWidth(m *Module) int {
	s := m.Shape
	switch m.Algo {
	case AlgoLoRA:
		if !m.Tucker {
			return dim(s[PartDown], 1)
		}
	case AlgoLoHa:
		if !m.Tucker {
			return dim(s[PartHadaW1B], 1)
		}
	case AlgoLoKr:
		_, c1, err1 := lokrW1Dims(s)
		_, c2, err2 := lokrW2Dims(s, m.Tucker)
		if err1 == nil && err2 == nil {
			return c1 * c2
		}
	case AlgoFull:
		return dim(s[PartDiff], 1)
	}
	return 0
}
