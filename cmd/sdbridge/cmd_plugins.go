// cmd_plugins.go: `sdbridge plugins` lists the built-in plugins and the
// third-party ones installed in plugins.json, with version and capabilities
// obtained by starting each one and calling Describe. A plugin that fails to
// start is listed with its error; the listing goes on.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// runPlugins implements 'sdbridge plugins'.
func runPlugins(args []string) error {
	fs := flag.NewFlagSet("plugins", flag.ContinueOnError)
	verbose := fs.Bool("v", false, "also list each plugin's parameters")
	cfgPath := fs.String("config", "", "installed-plugin list (default $XDG_CONFIG_HOME/sdbridge/plugins.json)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cfgPath == "" {
		p, err := host.PluginConfigPath()
		if err != nil {
			return err
		}
		*cfgPath = p
	}
	installed, err := host.LoadPluginConfig(*cfgPath)
	if err != nil {
		return err
	}
	sup, err := host.NewSupervisor(host.Options{CallTimeout: 30 * time.Second})
	if err != nil {
		return err
	}
	defer sup.Close()

	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tVERSION\tCAPABILITIES\tSTATUS")
	var details []string
	show := func(kind string, spec host.Spec) {
		p, err := sup.Register(spec)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			var d *sdk.DescribeResponse
			d, err = p.Describe(ctx)
			cancel()
			p.Stop()
			if err == nil {
				caps := make([]string, len(d.Capabilities))
				for i, c := range d.Capabilities {
					caps[i] = string(c)
				}
				status := "ok"
				if kind == "installed" {
					status = "ok (" + spec.Path + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", spec.Name, kind, d.Version, strings.Join(caps, ","), status)
				if *verbose {
					for _, ps := range d.Params {
						details = append(details, fmt.Sprintf("%s: %s (%s, default %q) %s", spec.Name, ps.Name, ps.Type, ps.Default, ps.Help))
					}
				}
				return
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t-\t-\terror: %s\n", spec.Name, kind, firstLine(err.Error()))
	}
	for _, b := range builtins() {
		if b.serve == nil {
			fmt.Fprintf(tw, "%s\tbuilt-in\t-\t-\t%s\n", b.name, b.note)
			continue
		}
		spec, err := host.BuiltinSpec(b.name)
		if err != nil {
			return err
		}
		show("built-in", spec)
	}
	for _, spec := range installed {
		show("installed", spec)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, d := range details {
		fmt.Println(d)
	}
	if len(installed) == 0 {
		fmt.Printf("\nno third-party plugins installed (%s)\n", *cfgPath)
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
