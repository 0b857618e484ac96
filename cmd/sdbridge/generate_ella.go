// generate_ella.go: the ELLA flags of 'sdbridge generate' (and 'dpg') and
// the constructor that turns them into the pipeline's Conditioner:
//
//	--ella FILE --t5 DIR [--ella-mode flexible|fixed|concat] [--t5-tokenizer PATH]
//	[--ella-heads 8] [--t5-fp16] [--ella-int-timesteps] [--ella-keep-syntax]
//
// The ella plugin runs in its own process (this binary re-run as `sdbridge
// plugin ella`) under the caller's supervisor. It does not parse the other
// generate flags or write images.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
)

// ellaOpts are the parsed ELLA flags.
type ellaOpts struct {
	ella, t5, t5Tokenizer, mode string
	heads                       int
	t5FP16, intTimesteps        bool
	keepSyntax                  bool
}

// ellaFlags registers the ELLA flags on fs.
func ellaFlags(fs *flag.FlagSet) *ellaOpts {
	o := &ellaOpts{}
	fs.StringVar(&o.ella, "ella", "", "ELLA connector `FILE` (ella-sd1.5-tsc-t5xl.safetensors); replaces CLIP with FLAN-T5 + ELLA")
	fs.StringVar(&o.t5, "t5", "", "FLAN-T5-XL encoder `DIR` (config.json, model.safetensors; spiece.model or tokenizer.json)")
	fs.StringVar(&o.t5Tokenizer, "t5-tokenizer", "", "T5 tokenizer `PATH` (spiece.model, tokenizer.json or a folder) when --t5 has none")
	fs.StringVar(&o.mode, "ella-mode", host.ELLAFlexible, "ELLA mode: flexible (no padding, recommended), fixed (128 tokens), concat (ELLA + CLIP tokens, for trigger words)")
	fs.IntVar(&o.heads, "ella-heads", models.ELLADefaultHeads, "ELLA connector attention heads (8 for the released model)")
	fs.BoolVar(&o.t5FP16, "t5-fp16", false, "round T5 as an all-fp16 PyTorch model does (what ELLA was trained with)")
	fs.BoolVar(&o.keepSyntax, "ella-keep-syntax", false, "give T5 the prompt's A1111 emphasis syntax as text (default: strip (word:1.2), [word], BREAK and keep the words)")
	fs.BoolVar(&o.intTimesteps, "ella-int-timesteps", false, "truncate the timestep to an integer before ELLA (ComfyUI-ELLA compatibility)")
	return o
}

// enabled reports whether ELLA was asked for.
func (o *ellaOpts) enabled() bool { return o != nil && (o.ella != "" || o.t5 != "") }

// problems lists what is wrong with the flags (nil when ELLA is off or the
// flags are fine); it reads only file metadata.
func (o *ellaOpts) problems() []string {
	if !o.enabled() {
		return nil
	}
	var errs []string
	switch {
	case o.ella == "":
		errs = append(errs, "--t5 needs --ella FILE (the ELLA connector)")
	case o.t5 == "":
		errs = append(errs, "--ella needs --t5 DIR (the FLAN-T5-XL encoder folder)")
	}
	if o.ella != "" {
		if st, err := os.Stat(o.ella); err != nil {
			errs = append(errs, fmt.Sprintf("--ella: %v", err))
		} else if st.IsDir() {
			errs = append(errs, fmt.Sprintf("--ella %s: is a folder, want the connector .safetensors file", o.ella))
		}
	}
	if o.t5 != "" {
		if st, err := os.Stat(o.t5); err != nil {
			errs = append(errs, fmt.Sprintf("--t5: %v", err))
		} else if !st.IsDir() {
			errs = append(errs, fmt.Sprintf("--t5 %s: not a folder (want the Hugging Face T5 folder with config.json and model.safetensors)", o.t5))
		}
	}
	if o.t5Tokenizer != "" {
		if _, err := os.Stat(o.t5Tokenizer); err != nil {
			errs = append(errs, fmt.Sprintf("--t5-tokenizer: %v", err))
		}
	}
	if !slices.Contains(host.ELLAModes, o.mode) {
		errs = append(errs, fmt.Sprintf("--ella-mode: unknown mode %q (valid: %s)", o.mode, strings.Join(host.ELLAModes, ", ")))
	}
	if o.heads < 1 {
		errs = append(errs, fmt.Sprintf("--ella-heads %d: must be at least 1", o.heads))
	}
	return errs
}

// newELLAConditioner starts the ella plugin (if needed), has it load and
// check T5 and the connector against the pipeline's U-Net, and encodes
// prompt and negative. The caller sets Request.Conditioner to it and
// closes it after the generation (before the supervisor).
func newELLAConditioner(ctx context.Context, o *ellaOpts, sup *host.Supervisor, p *host.Loaded, prompt, negative string) (*host.ELLAConditioner, error) {
	if errs := o.problems(); len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "\n  "))
	}
	plug, err := host.BuiltinPlugin(sup, "ella")
	if err != nil {
		return nil, err
	}
	plug.SetDevice(p.Device().ID()) // on a GPU T5 and the connector run there
	return host.NewELLAConditioner(ctx, plug, host.ELLAOptions{
		ELLA: o.ella, T5: o.t5, T5Tokenizer: o.t5Tokenizer, Mode: o.mode, Heads: o.heads,
		T5FP16: o.t5FP16, IntTimesteps: o.intTimesteps, ContextDim: p.UNetConfig.ContextDim,
		StripWeights: !o.keepSyntax,
		CLIP:         p.Prompts,
		GPU:          p.GPU(),
	}, prompt, negative)
}

// infoFields are the ELLA setup's infotext fields (connector file name
// without extension, mode, T5 folder name); nil when ELLA is off.
func (o *ellaOpts) infoFields() []host.InfoField {
	if !o.enabled() {
		return nil
	}
	return []host.InfoField{
		{Key: "ELLA", Value: strings.TrimSuffix(filepath.Base(o.ella), filepath.Ext(o.ella))},
		{Key: "ELLA mode", Value: o.mode},
		{Key: "T5", Value: filepath.Base(filepath.Clean(o.t5))},
	}
}

// label describes the ELLA setup for logs: infoFields as "Key: value"
// joined by ", ", unquoted; "" when ELLA is off.
func (o *ellaOpts) label() string {
	var parts []string
	for _, f := range o.infoFields() {
		parts = append(parts, f.Key+": "+f.Value)
	}
	return strings.Join(parts, ", ")
}
