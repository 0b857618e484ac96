// cmd_plugin.go: `sdbridge plugin <name>`, the hidden entry point the host
// re-executes to run a built-in plugin in its own process. The set of
// built-ins is wired here explicitly (no init() registry). It is not meant
// to be run by hand: without the host's handshake the plugin exits.
package main

import (
	"fmt"

	"github.com/sdbridge/sdbridge/plugins/controlnet"
	"github.com/sdbridge/sdbridge/plugins/ella"
	"github.com/sdbridge/sdbridge/plugins/lora"
)

// builtin is one built-in plugin; serve is nil while it is not available.
type builtin struct {
	name  string
	serve func()
	note  string
}

// builtins lists the built-in plugins in display order.
func builtins() []builtin {
	return []builtin{
		{name: "lora", serve: lora.Serve},
		{name: "controlnet", serve: controlnet.Serve},
		{name: "ella", serve: ella.Serve},
	}
}

// runPlugin implements 'sdbridge plugin <name>'.
func runPlugin(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: sdbridge plugin <name> (started by the host, not by hand)")
	}
	for _, b := range builtins() {
		if b.name == args[0] {
			if b.serve == nil {
				return fmt.Errorf("built-in plugin %q: %s", b.name, b.note)
			}
			b.serve()
			return nil
		}
	}
	return fmt.Errorf("no built-in plugin %q", args[0])
}
