// format.go renders a Report as the human summary `sdbridge inspect` prints.
package inspect

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// Print writes a human summary of r.
func (r *Report) Print(w io.Writer) {
	kind := r.Kind
	if r.Architecture != "" {
		kind = r.Architecture + " " + kind
	}
	fmt.Fprintf(w, "%s\n  kind:        %s\n", r.Path, kind)
	if len(r.Components) > 0 {
		fmt.Fprintf(w, "  components:  %s\n", strings.Join(r.Components, ", "))
	}
	if r.Variant != "" {
		fmt.Fprintf(w, "  variant:     %s\n", r.Variant)
	}
	var dts []string
	for _, d := range slices.Sorted(maps.Keys(r.DTypes)) {
		dts = append(dts, fmt.Sprintf("%s x%d", d, r.DTypes[d]))
	}
	fmt.Fprintf(w, "  tensors:     %d (%s), %.1f M parameters", r.Tensors, strings.Join(dts, ", "), float64(r.Parameters)/1e6)
	if r.Bytes > 0 {
		fmt.Fprintf(w, ", %.1f MB", float64(r.Bytes)/1e6)
	}
	fmt.Fprintln(w)
	if u := r.UNet; u != nil {
		fmt.Fprintf(w, "  unet:        model_channels %d, channel_mult %v, res blocks %d, context %d, in_channels %d, heads %d\n",
			u.ModelChannels, u.ChannelMult, u.NumResBlocks, u.ContextDim, u.InChannels, u.Heads)
	}
	if v := r.VAE; v != nil {
		fmt.Fprintf(w, "  vae:         ch %d, ch_mult %v, z_channels %d, encoder %v\n", v.Ch, v.ChMult, v.ZChannels, v.Encoder)
	}
	if c := r.CLIP; c != nil {
		fmt.Fprintf(w, "  text enc.:   CLIP, hidden %d, %d layers, %d heads, vocab %d (%s layout)\n", c.Hidden, c.Layers, c.Heads, c.Vocab, c.Layout)
	}
	if l := r.LoRA; l != nil {
		fmt.Fprintf(w, "  lora:        %s, %s names, %d modules (U-Net %d, text encoder %d), ranks %v, alphas %v, DoRA %v\n",
			l.Format, l.Naming, l.Modules, l.UNetModules, l.TEModules, l.Ranks, l.Alphas, l.DoRA)
	}
	if c := r.ControlNet; c != nil {
		fmt.Fprintf(w, "  controlnet:  form %s, model_channels %d, context %d, hint channels %d\n", c.Form, c.ModelChannels, c.ContextDim, c.HintChannels)
	}
	if e := r.ELLA; e != nil {
		fmt.Fprintf(w, "  ella:        width %d, input_dim %d, %d blocks, %d latents, time channels %d, heads %d\n",
			e.Width, e.InputDim, e.Layers, e.NumLatents, e.TimeChannel, e.Heads)
	}
	if t := r.T5; t != nil {
		fmt.Fprintf(w, "  t5:          d_model %d, %d heads x %d, %d layers, d_ff %d, vocab %d\n", t.DModel, t.Heads, t.DKV, t.Layers, t.DFF, t.Vocab)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "  note:        %s\n", n)
	}
}
