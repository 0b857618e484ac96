// generate_controlnet.go: the ControlNet flags of 'sdbridge generate' and
// turning them into the host's ResidualSource. Flags are repeatable: every
// --controlnet FILE starts a new unit and the --control-* flags after it set
// that unit (so several nets each get their own image and settings):
//
//	--controlnet FILE            ControlNet .safetensors or diffusers folder
//	--control-image IMG          PNG or JPEG control image (required per unit)
//	--control-preprocess P       none | canny[:LOW[:HIGH]] | invert |
//	                             scribble[:THR] | tile[:RATE] | blur[:SIGMA]
//	--control-resize M           resize | crop (default) | pad
//	--control-strength S         default 1
//	--control-start F, --control-end F  fractions of the steps (A1111: step i
//	                             of N runs iff start <= i/N <= end)
//	--control-range R            steps (default: start/end are fractions of the
//	                             steps) | sigma (ComfyUI start/end_percent of
//	                             the noise schedule)
//	--control-guess              guess mode: soft weights, cond half only
//	--control-global-pool[=B]    spatial-mean residuals, cond half only (default:
//	                             on for files whose name contains "shuffle")
//	--control-prompt TEXT        a separate prompt for this net's context
//
// It does not run the generation (cmd_generate.go does) and does not start
// the plugin before the first generation needs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/controlnet"
)

// controlNetUnitFlags are the settings of one --controlnet.
type controlNetUnitFlags struct {
	path, image, preprocess, resize, prompt string
	strength, start, end                    float64
	guess, sigmaRange                       bool
	globalPool                              *bool // nil: from the file name
}

// controlNetOpts collects the repeatable ControlNet flags.
type controlNetOpts struct {
	units []*controlNetUnitFlags
}

// controlNetFlags registers the ControlNet flags on fs.
func controlNetFlags(fs *flag.FlagSet) *controlNetOpts {
	o := &controlNetOpts{}
	fs.Func("controlnet", "ControlNet file (repeatable; the --control-* flags after it apply to it)", func(v string) error {
		o.units = append(o.units, &controlNetUnitFlags{path: v, preprocess: "none", resize: controlnet.ResizeCrop, strength: 1, end: 1})
		return nil
	})
	str := func(name, usage string, set func(u *controlNetUnitFlags, v string) error) {
		fs.Func(name, usage, func(v string) error {
			if len(o.units) == 0 {
				return fmt.Errorf("--%s must follow the --controlnet it applies to", name)
			}
			return set(o.units[len(o.units)-1], v)
		})
	}
	num := func(name, usage string, dst func(u *controlNetUnitFlags) *float64) {
		str(name, usage, func(u *controlNetUnitFlags, v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return err
			}
			*dst(u) = f
			return nil
		})
	}
	str("control-image", "control image (PNG or JPEG) of the last --controlnet", func(u *controlNetUnitFlags, v string) error { u.image = v; return nil })
	str("control-preprocess", "none | canny[:LOW[:HIGH]] | invert | scribble[:THR] | tile[:RATE] | blur[:SIGMA]", func(u *controlNetUnitFlags, v string) error {
		if _, err := controlnet.ParsePreprocessor(v); err != nil {
			return err
		}
		u.preprocess = v
		return nil
	})
	str("control-resize", "fit the image to the output: resize | crop | pad (default crop)", func(u *controlNetUnitFlags, v string) error {
		for _, m := range controlnet.ResizeModes {
			if v == m {
				u.resize = v
				return nil
			}
		}
		return fmt.Errorf("unknown resize mode %q (want resize, crop or pad)", v)
	})
	str("control-prompt", "a separate prompt for the ControlNet's context (cond half)", func(u *controlNetUnitFlags, v string) error { u.prompt = v; return nil })
	num("control-strength", "residual multiplier (default 1)", func(u *controlNetUnitFlags) *float64 { return &u.strength })
	num("control-start", "first step, as a fraction of the steps (default 0)", func(u *controlNetUnitFlags) *float64 { return &u.start })
	num("control-end", "last step, as a fraction of the steps (default 1)", func(u *controlNetUnitFlags) *float64 { return &u.end })
	str("control-range", "what --control-start/--control-end count: steps (default) or sigma (noise schedule, as ComfyUI)", func(u *controlNetUnitFlags, v string) error {
		switch v {
		case "steps":
			u.sigmaRange = false
		case "sigma":
			u.sigmaRange = true
		default:
			return fmt.Errorf("unknown range %q (want steps or sigma)", v)
		}
		return nil
	})
	fs.BoolFunc("control-global-pool", "replace residuals by their spatial means, cond half only (default: on for *shuffle* files)", func(v string) error {
		if len(o.units) == 0 {
			return errors.New("--control-global-pool must follow the --controlnet it applies to")
		}
		b, err := strconv.ParseBool(v)
		o.units[len(o.units)-1].globalPool = &b
		return err
	})
	fs.BoolFunc("control-guess", "guess mode: soft weights 0.825^(12-i), control on the cond half only", func(v string) error {
		if len(o.units) == 0 {
			return errors.New("--control-guess must follow the --controlnet it applies to")
		}
		b, err := strconv.ParseBool(v)
		o.units[len(o.units)-1].guess = b
		return err
	})
	return o
}

// enabled reports whether any --controlnet was given.
func (o *controlNetOpts) enabled() bool { return o != nil && len(o.units) > 0 }

// residualSource prepares the hints (load, fit to the output size,
// preprocess) and returns the ControlNet source for req on p, started
// through sup; the caller sets req.Residuals and closes the source after
// the generation. It returns nil when no --controlnet was given.
func (o *controlNetOpts) residualSource(ctx context.Context, sup *host.Supervisor, p *host.Loaded, req *host.Request) (*host.ControlNetSource, error) {
	if !o.enabled() {
		return nil, nil
	}
	var units []host.ControlNetUnit
	for i, f := range o.units {
		if f.image == "" {
			return nil, fmt.Errorf("--controlnet %s (#%d) has no --control-image", f.path, i+1)
		}
		hint, err := controlnet.PrepareHint(f.image, req.Width, req.Height, f.resize, f.preprocess)
		if err != nil {
			return nil, fmt.Errorf("--controlnet %s (#%d): %w", f.path, i+1, err)
		}
		var pctx *nn.Tensor
		if f.prompt != "" {
			if p.Prompts == nil {
				return nil, fmt.Errorf("--control-prompt: no text encoder loaded")
			}
			if pctx, err = p.Prompts.EncodePrompt(ctx, f.prompt); err != nil {
				return nil, fmt.Errorf("--control-prompt: %w", err)
			}
		}
		pool := strings.Contains(strings.ToLower(filepath.Base(f.path)), "shuffle") // as A1111
		if f.globalPool != nil {
			pool = *f.globalPool
		}
		units = append(units, host.ControlNetUnit{Path: f.path, Hint: hint, Strength: f.strength,
			Start: f.start, End: f.end, SigmaRange: f.sigmaRange, Guess: f.guess, GlobalPool: pool, Context: pctx})
	}
	plugin, err := host.BuiltinPlugin(sup, "controlnet")
	if err != nil {
		return nil, err
	}
	plugin.SetDevice(p.Device().ID()) // on a GPU the net runs there, residuals in device memory
	return host.NewControlNetSource(ctx, plugin, host.ControlNetOptions{
		UNet: p.UNetConfig, Schedule: p.Schedule, ScheduleName: req.Schedule, Steps: req.Steps,
		Batch: max(req.Batch, 1), CFG: req.CFG, Width: req.Width, Height: req.Height, GPU: p.GPU(),
	}, units)
}
