// describe.go summarises an adapter file for `sdbridge inspect` and the
// plugin's Describe: format, naming family, ranks, alphas, DoRA, targets and
// the architecture its metadata claims. It needs no checkpoint, so the
// U-Net / text-encoder split is by name spelling only; it does not validate
// anything (plan.go does).
package lora

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Info is a summary of one adapter file.
type Info struct {
	Path        string
	Format      string         // e.g. "LoRA", "LoCon", "LoHa", "LoKr", "LoCon (Tucker)", "IA3", "full", or "A + B"
	Naming      string         // "kohya", "kohya (ldm names)", "PEFT", "diffusers", "ComfyUI", "LyCORIS" (+ ...)
	Algorithms  map[string]int // per-module algorithm counts (Format's inputs)
	Modules     int
	UNetModules int
	TEModules   int
	Ranks       []int     // distinct ranks, ascending
	Alphas      []float64 // distinct alphas, ascending (empty: no alpha tensors)
	DoRA        bool
	Targets     []string // module names as spelled in the file
	Skipped     []string
	// Claimed is the architecture the metadata names ("" if none).
	Claimed string
}

// Describe summarises f.
func Describe(f *File) Info {
	in := Info{Path: f.Path, Algorithms: map[string]int{}, Modules: len(f.Modules), Skipped: slices.Clone(f.Skipped)}
	ranks, alphas, naming := map[int]bool{}, map[float64]bool{}, map[string]bool{}
	for _, m := range f.Modules {
		in.Algorithms[algoLabel(m)]++
		if m.Rank > 0 {
			ranks[m.Rank] = true
		}
		if m.HasA {
			alphas[m.Alpha] = true
		}
		in.DoRA = in.DoRA || m.DoRA
		if isTEName(m.Name) {
			in.TEModules++
		} else {
			in.UNetModules++
		}
		naming[namingOf(m.Name)] = true
		in.Targets = append(in.Targets, m.Name)
	}
	in.Ranks = slices.Sorted(maps.Keys(ranks))
	in.Alphas = slices.Sorted(maps.Keys(alphas))
	if naming["kohya (ldm names)"] {
		delete(naming, "kohya") // its lora_te_ names are kohya too
	}
	in.Naming = strings.Join(slices.Sorted(maps.Keys(naming)), " + ")
	labels := slices.Sorted(maps.Keys(in.Algorithms))
	slices.SortStableFunc(labels, func(a, b string) int { return in.Algorithms[b] - in.Algorithms[a] })
	in.Format = strings.Join(labels, " + ")
	md := f.Metadata
	switch {
	case md["modelspec.architecture"] != "":
		in.Claimed = md["modelspec.architecture"]
	case strings.HasPrefix(md["ss_base_model_version"], "sdxl_"):
		in.Claimed = "SDXL"
	case md["ss_v2"] == "True":
		in.Claimed = "SD 2.x"
	case md["ss_v2"] == "False":
		in.Claimed = "SD 1.x"
	}
	return in
}

// algoLabel is the user-facing name of a module's algorithm.
func algoLabel(m *Module) string {
	switch m.Algo {
	case AlgoLoRA:
		down := m.Shape[PartDown]
		switch {
		case m.Tucker:
			return "LoCon (Tucker)"
		case len(down) == 4 && numel(down[2:]) > 1:
			return "LoCon"
		}
		return "LoRA"
	case AlgoLoHa:
		if m.Tucker {
			return "LoHa (CP)"
		}
		return "LoHa"
	case AlgoLoKr:
		if m.Tucker {
			return "LoKr (Tucker)"
		}
		return "LoKr"
	case AlgoIA3:
		return "IA3"
	}
	return string(m.Algo)
}

// namingOf guesses the naming family from a module name's prefix.
func namingOf(n string) string {
	switch {
	case strings.HasPrefix(n, "lora_unet_input_blocks_"), strings.HasPrefix(n, "lora_unet_middle_block_"),
		strings.HasPrefix(n, "lora_unet_output_blocks_"):
		return "kohya (ldm names)"
	case strings.HasPrefix(n, "lora_"), strings.HasPrefix(n, "oft_unet_"):
		return "kohya"
	case strings.HasPrefix(n, "lycoris_"):
		return "LyCORIS"
	case strings.HasPrefix(n, "diffusion_model."), strings.HasPrefix(n, "text_encoders."):
		return "ComfyUI"
	case strings.Contains(n, ".processor."):
		return "diffusers (attention processors)"
	case strings.HasPrefix(n, "unet."), strings.HasPrefix(n, "text_encoder."), strings.HasPrefix(n, "base_model."):
		return "PEFT/diffusers"
	}
	return "other"
}

// String prints the summary on a few lines.
func (in Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s, %s names, %d modules (%d U-Net, %d text encoder)\n", in.Path, in.Format, in.Naming,
		in.Modules, in.UNetModules, in.TEModules)
	fmt.Fprintf(&b, "  rank %v", in.Ranks)
	if len(in.Alphas) > 0 {
		fmt.Fprintf(&b, ", alpha %v", in.Alphas)
	} else {
		b.WriteString(", no alpha (scale 1 unless a PEFT config says otherwise)")
	}
	if in.DoRA {
		b.WriteString(", DoRA")
	}
	if in.Claimed != "" {
		fmt.Fprintf(&b, ", metadata says %s", in.Claimed)
	}
	if len(in.Skipped) > 0 {
		fmt.Fprintf(&b, "\n  skipped %d tensors (embedding bundles)", len(in.Skipped))
	}
	return b.String()
}
