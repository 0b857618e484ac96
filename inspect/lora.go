// lora.go recognises LoRA-family files by their part names and summarises
// them through the lora package (format, naming, rank, alpha, targets, DoRA).
package inspect

import (
	"fmt"
	"strings"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/plugins/lora"
)

// LoRAInfo summarises an adapter file.
type LoRAInfo struct {
	Format      string    `json:"format"`
	Naming      string    `json:"naming"`
	Modules     int       `json:"modules"`
	UNetModules int       `json:"unet_modules"`
	TEModules   int       `json:"text_encoder_modules"`
	Ranks       []int     `json:"ranks,omitempty"`
	Alphas      []float64 `json:"alphas,omitempty"`
	DoRA        bool      `json:"dora,omitempty"`
}

// isLoRA: at least half of the tensors parse as adapter parts other than a
// bare ".weight" (which every model file has).
func isLoRA(names []string) bool {
	n := 0
	for _, k := range names {
		if _, part, ok := lora.ParseKey(k); ok && part != lora.PartIA3Weight {
			n++
		}
	}
	return n > 0 && 2*n >= len(names)
}

func describeLoRA(src models.Source, r *Report) {
	f, err := lora.Parse(r.Path, src, nil)
	if err != nil {
		r.Notes = append(r.Notes, err.Error())
		return
	}
	in := lora.Describe(f)
	r.LoRA = &LoRAInfo{in.Format, in.Naming, in.Modules, in.UNetModules, in.TEModules, in.Ranks, in.Alphas, in.DoRA}
	if in.UNetModules > 0 {
		r.Components = append(r.Components, "unet")
	}
	if in.TEModules > 0 {
		r.Components = append(r.Components, "text_encoder")
	}
	r.Architecture = loraArch(src, in.Targets)
	if in.Claimed != "" {
		r.Notes = append(r.Notes, fmt.Sprintf("metadata says it was trained for %s", in.Claimed))
	}
	if len(in.Skipped) > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("%d tensors ignored (e.g. %s)", len(in.Skipped), in.Skipped[0]))
	}
}

// loraArch tells SD1.5 from SDXL/SD2 by names only those have and by the
// cross-attention context width the attn2 to_k down-projection reads.
func loraArch(src models.Source, targets []string) string {
	for _, t := range targets {
		if strings.HasPrefix(t, "lora_te1_") || strings.HasPrefix(t, "lora_te2_") {
			return "SDXL"
		}
	}
	for _, k := range src.Names() {
		if !strings.Contains(k, "attn2") || !strings.Contains(k, "to_k") {
			continue
		}
		if !strings.Contains(k, "lora_down") && !strings.Contains(k, "lora_A") && !strings.Contains(k, "lora.down") {
			continue
		}
		if info, ok := src.Lookup(k); ok && len(info.Shape) == 2 {
			switch info.Shape[1] {
			case 2048:
				return "SDXL"
			case 1024:
				return "SD2.x"
			}
		}
	}
	return "SD1.5"
}
