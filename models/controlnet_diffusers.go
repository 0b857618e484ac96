// controlnet_diffusers.go: the diffusers ControlNetModel layout converted to
// ldm names at the edge, so the rest of the code sees one canonical naming.
//
// The table is generated from formulas and follows diffusers
// src/diffusers/loaders/single_file_utils.py convert_controlnet_checkpoint
// (ldm -> diffusers; its resnet sub-names come from
// update_unet_resnet_ldm_to_diffusers, its hint names from the
// controlnet_cond_embedding section), read here in the forward direction
// ldm -> diffusers and inverted for lookup. Attention tails (norm, proj_in,
// transformer_blocks.*, proj_out) are identical in both layouts. It does not
// convert diffusers U-Nets (only ControlNets) and never reads config.json:
// the shapes carry everything but the head count.
package models

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/sdbridge/sdbridge/safetensors"
)

// NamePair is one row of a name table: an ldm prefix and its diffusers
// counterpart (whole dotted components; the tails after them are equal).
type NamePair struct{ LDM, Diffusers string }

// resnetSubNames maps ldm ResBlock layer names to diffusers ResnetBlock2D.
var resnetSubNames = []NamePair{
	{"in_layers.0", "norm1"},
	{"in_layers.2", "conv1"},
	{"emb_layers.1", "time_emb_proj"},
	{"out_layers.0", "norm2"},
	{"out_layers.3", "conv2"},
	{"skip_connection", "conv_shortcut"},
}

// ControlNetDiffusersTable returns the ldm -> diffusers table of a ControlNet
// with levels x resBlocks encoder blocks and hintBlocks middle convs in its
// hint encoder (SD 1.5: 4, 2, 6).
func ControlNetDiffusersTable(levels, resBlocks, hintBlocks int) []NamePair {
	t := []NamePair{
		{"time_embed.0", "time_embedding.linear_1"},
		{"time_embed.2", "time_embedding.linear_2"},
		{"input_blocks.0.0", "conv_in"},
		{"input_hint_block.0", "controlnet_cond_embedding.conv_in"},
		{fmt.Sprintf("input_hint_block.%d", 2*(hintBlocks+1)), "controlnet_cond_embedding.conv_out"},
		{"middle_block.1", "mid_block.attentions.0"},
		{"middle_block_out.0", "controlnet_mid_block"},
	}
	resnet := func(ldm, diff string) {
		for _, s := range resnetSubNames {
			t = append(t, NamePair{ldm + "." + s.LDM, diff + "." + s.Diffusers})
		}
	}
	for k := range hintBlocks {
		t = append(t, NamePair{fmt.Sprintf("input_hint_block.%d", 2*(k+1)), fmt.Sprintf("controlnet_cond_embedding.blocks.%d", k)})
	}
	for l := range levels {
		for j := range resBlocks {
			n := 1 + l*(resBlocks+1) + j
			resnet(fmt.Sprintf("input_blocks.%d.0", n), fmt.Sprintf("down_blocks.%d.resnets.%d", l, j))
			t = append(t, NamePair{fmt.Sprintf("input_blocks.%d.1", n), fmt.Sprintf("down_blocks.%d.attentions.%d", l, j)})
		}
		if l < levels-1 {
			n := 1 + l*(resBlocks+1) + resBlocks
			t = append(t, NamePair{fmt.Sprintf("input_blocks.%d.0.op", n), fmt.Sprintf("down_blocks.%d.downsamplers.0.conv", l)})
		}
	}
	resnet("middle_block.0", "mid_block.resnets.0")
	resnet("middle_block.2", "mid_block.resnets.1")
	for i := range 1 + levels*resBlocks + levels - 1 {
		t = append(t, NamePair{fmt.Sprintf("zero_convs.%d.0", i), fmt.Sprintf("controlnet_down_blocks.%d", i)})
	}
	return t
}

// maxDiffusersBlocks bounds every block count read from diffusers names.
const maxDiffusersBlocks = 16

// renamedSource presents a Source under other names (canonical -> stored).
// Stored keys the table does not cover keep their own names, so they show
// up in Weights.Unused.
type renamedSource struct {
	src      Source
	toStored map[string]string
	names    []string
}

func (r *renamedSource) Get(name string) (safetensors.Tensor, error) {
	stored, ok := r.toStored[name]
	if !ok {
		return safetensors.Tensor{}, fmt.Errorf("missing tensor %q", name)
	}
	t, err := r.src.Get(stored)
	if err != nil {
		return t, fmt.Errorf("%s (stored as %q): %w", name, stored, err)
	}
	t.Name = name
	return t, nil
}

func (r *renamedSource) Lookup(name string) (*safetensors.Info, bool) {
	stored, ok := r.toStored[name]
	if !ok {
		return nil, false
	}
	return r.src.Lookup(stored)
}

func (r *renamedSource) Names() []string { return r.names }

// diffusersControlNetSource renames a diffusers ControlNetModel file to ldm
// names. The block counts come from the stored names.
func diffusersControlNetSource(src Source) (Source, error) {
	names := src.Names()
	levels := maxIndex(names, "down_blocks.") + 1
	resBlocks := maxIndex(names, "down_blocks.0.resnets.") + 1
	hintBlocks := maxIndex(names, "controlnet_cond_embedding.blocks.") + 1
	if levels == 0 || resBlocks == 0 {
		return nil, fmt.Errorf("diffusers ControlNet without down_blocks.N.resnets.M tensors")
	}
	// The counts come from untrusted names: bound them before building a
	// table of that size (SD 1.5: 4 levels, 2 res blocks, 6 hint blocks).
	if levels > maxDiffusersBlocks || resBlocks > maxDiffusersBlocks || hintBlocks > maxDiffusersBlocks {
		return nil, fmt.Errorf("diffusers ControlNet with %d down blocks, %d resnets, %d hint blocks: not an SD 1.x layout", levels, resBlocks, hintBlocks)
	}
	fromDiff := map[string]string{}
	for _, p := range ControlNetDiffusersTable(levels, resBlocks, hintBlocks) {
		fromDiff[p.Diffusers] = p.LDM
	}
	r := &renamedSource{src: src, toStored: map[string]string{}}
	for _, n := range names {
		canon := renamePrefix(n, fromDiff)
		if _, dup := r.toStored[canon]; dup {
			return nil, fmt.Errorf("tensors %q and %q both map to %q", r.toStored[canon], n, canon)
		}
		r.toStored[canon] = n
		r.names = append(r.names, canon)
	}
	return r, nil
}

// renamePrefix replaces the longest dotted prefix of name found in table.
func renamePrefix(name string, table map[string]string) string {
	for i := len(name); i > 0; i = strings.LastIndexByte(name[:i], '.') {
		if to, ok := table[name[:i]]; ok {
			return to + name[i:]
		}
	}
	return name
}

// maxIndex is the largest N among names "prefix N.…", or -1.
func maxIndex(names []string, prefix string) int {
	best := -1
	for _, n := range names {
		rest, ok := strings.CutPrefix(n, prefix)
		if !ok {
			continue
		}
		num, _, _ := strings.Cut(rest, ".")
		if v, err := strconv.Atoi(num); err == nil {
			best = max(best, v)
		}
	}
	return best
}

// hasAny reports whether any name has one of the prefixes.
func hasAny(names []string, prefixes ...string) bool {
	return slices.ContainsFunc(names, func(n string) bool {
		return slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(n, p) })
	})
}
