// generate_plugins.go: `generate --plugin NAME[:key=value,...]`
// (repeatable) attaches an installed third-party plugin, one listed in
// $XDG_CONFIG_HOME/sdbridge/plugins.json with its sha256 (the supervisor
// refuses a binary whose hash differs). Before the model is loaded each
// plugin is started and described: its parameters are checked against its
// ParamSpecs and its roles are wired generically: a WeightPatcher patches
// the U-Net/text-encoder weights after the LoRAs (Loaded.ApplyPatchPlugins),
// a Conditioner replaces the prompt context (host.PluginConditioner), a
// ResidualProvider adds U-Net residuals (host.PluginResidualSource, with a
// host "strength" unless the plugin declares one). The PNG infotext gets a
// `Plugins: "name(key=value,...)"` field.
//
// Built-in plugins are refused here (they have their own flags). Only one
// conditioner (ELLA included) and one residual source (ControlNet
// included) per generation; weight patchers run on the CPU path only. It
// does not list plugins (cmd_plugins.go) or install them.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// builtinFlagHint says which flags drive a built-in plugin.
var builtinFlagHint = map[string]string{
	"lora":       "--lora FILE[:STRENGTH]",
	"controlnet": "--controlnet FILE --control-image IMG",
	"ella":       "--ella FILE --t5 DIR",
}

// pluginOpts are the --plugin flags and, once started, the plugins.
type pluginOpts struct {
	uses      []host.PluginUse
	described []*host.DescribedPlugin
	// configPath overrides the plugins.json location (tests); "" is
	// host.PluginConfigPath.
	configPath string
}

func pluginFlags(fs *flag.FlagSet) *pluginOpts {
	o := &pluginOpts{}
	fs.Func("plugin", "installed third-party plugin `NAME[:key=value,...]` (repeatable; 'sdbridge plugins -v' lists each one's parameters)", func(v string) error {
		u, err := host.ParsePluginUse(v)
		if err != nil {
			return err
		}
		for _, b := range builtins() {
			if b.name == u.Name {
				hint := builtinFlagHint[u.Name]
				if hint == "" {
					hint = "its own flags"
				}
				return fmt.Errorf("%q is a built-in plugin: use %s, not --plugin", u.Name, hint)
			}
		}
		if slices.ContainsFunc(o.uses, func(x host.PluginUse) bool { return x.Name == u.Name }) {
			return fmt.Errorf("plugin %q given twice (give all its parameters in one --plugin)", u.Name)
		}
		o.uses = append(o.uses, u)
		return nil
	})
	return o
}

// enabled reports whether any --plugin was given.
func (o *pluginOpts) enabled() bool { return o != nil && len(o.uses) > 0 }

// start registers every plugin from plugins.json under sup, describes it
// and checks its parameters; call it before the model is loaded.
func (o *pluginOpts) start(ctx context.Context, sup *host.Supervisor) error {
	if !o.enabled() {
		return nil
	}
	path := o.configPath
	if path == "" {
		var err error
		if path, err = host.PluginConfigPath(); err != nil {
			return err
		}
	}
	specs, err := host.LoadPluginConfig(path)
	if err != nil {
		return err
	}
	for _, u := range o.uses {
		i := slices.IndexFunc(specs, func(s host.Spec) bool { return s.Name == u.Name })
		if i < 0 {
			return fmt.Errorf("--plugin %s: not installed (no entry in %s; 'sdbridge plugins' lists the installed ones)", u.Name, path)
		}
		p, err := sup.Get(u.Name)
		if err == nil && (p.Spec().Path != specs[i].Path || p.Spec().SHA256 != specs[i].SHA256) {
			return fmt.Errorf("--plugin %s: another plugin of that name is already running (%s)", u.Name, p.Spec().Path)
		}
		if err != nil { // not running yet (a supervisor kept by a test or a long run may have it)
			if p, err = sup.Register(specs[i]); err != nil {
				return fmt.Errorf("--plugin %s: %w", u.Name, err)
			}
		}
		d, err := host.DescribePluginUse(ctx, p, u)
		if err != nil {
			return fmt.Errorf("--plugin %s: %w", u.Name, err)
		}
		o.described = append(o.described, d)
	}
	return nil
}

// patches reports whether a started plugin patches weights (the pipeline
// must then be loaded patchable).
func (o *pluginOpts) patches() bool {
	if o == nil {
		return false
	}
	return slices.ContainsFunc(o.described, func(d *host.DescribedPlugin) bool { return d.Roles.Patch })
}

// install wires every role of the started plugins into p and req (after
// the LoRAs are applied and the built-in hooks are set). Call cleanup
// after the generation, even after an error.
func (o *pluginOpts) install(ctx context.Context, sup *host.Supervisor, p *host.Loaded, req *host.Request, stderr io.Writer) (cleanup func(), err error) {
	var closers []func() error
	cleanup = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	if o == nil {
		return cleanup, nil
	}
	var patchers []host.PatchPluginUse
	for _, d := range o.described {
		name := d.Use.Name
		if d.Roles.Patch {
			patchers = append(patchers, host.PatchPluginUse{Plugin: d.Plugin, Params: d.Use.Params})
		}
		if d.Roles.Condition {
			if req.Conditioner != nil {
				return cleanup, fmt.Errorf("--plugin %s: the prompt context already comes from another conditioner (ELLA or a plugin); use one", name)
			}
			c, err := host.NewPluginConditioner(ctx, d.Plugin, d.Use.Params, p.UNetConfig.ContextDim, req.Prompt, req.Negative)
			if err != nil {
				return cleanup, fmt.Errorf("--plugin %s: %w", name, err)
			}
			closers = append(closers, c.Close)
			req.Conditioner = c
			fmt.Fprintf(stderr, "plugin %s %s: conditioner\n", name, d.Info.Version)
		}
		if d.Roles.Residuals {
			if req.Residuals != nil {
				return cleanup, fmt.Errorf("--plugin %s: U-Net residuals already come from another source (ControlNet or a plugin); use one", name)
			}
			hostStrength := !slices.ContainsFunc(d.Info.Params, func(s sdk.ParamSpec) bool { return s.Name == host.StrengthParam })
			src, err := host.NewPluginResidualSource(d.Plugin, p.UNetConfig, d.Use.Params, hostStrength)
			if err != nil {
				return cleanup, fmt.Errorf("--plugin %s: %w", name, err)
			}
			closers = append(closers, src.Close)
			req.Residuals = src
			fmt.Fprintf(stderr, "plugin %s %s: residuals\n", name, d.Info.Version)
		}
	}
	if len(patchers) > 0 {
		t0 := time.Now()
		reps, err := p.ApplyPatchPlugins(ctx, sup, patchers)
		if err != nil {
			return cleanup, fmt.Errorf("--plugin: %w", err)
		}
		for i, r := range reps {
			fmt.Fprintf(stderr, "plugin %s: patched %d weight(s) in %.2fs\n", patchers[i].Plugin.Name(), len(r.Touched), time.Since(t0).Seconds())
			for _, w := range r.Warnings {
				fmt.Fprintf(stderr, "plugin %s: warning: %s\n", patchers[i].Plugin.Name(), w)
			}
		}
	}
	return cleanup, nil
}

// infotext adds the Plugins field.
func (o *pluginOpts) infotext(params *host.Parameters) {
	if o.enabled() {
		params.Extra = append(params.Extra, host.PluginsInfotext(o.uses))
	}
}
