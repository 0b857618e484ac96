// Command sdbridge runs Stable Diffusion 1.5 checkpoints with out-of-process
// plugins. Each subcommand lives in its own file (cmd_<name>.go) and is
// wired here explicitly; main itself only dispatches.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"sort"
)

type command struct {
	summary string
	run     func(args []string) error
	hidden  bool
}

func commands() map[string]command {
	return map[string]command{
		"inspect":  {summary: "describe checkpoint, LoRA, ControlNet, ELLA and T5 files", run: runInspect},
		"generate": {summary: "generate images from a prompt (txt2img)", run: runGenerate},
		"demo":     {summary: "build tiny models and run a real generation with plugins", run: runDemo},
		"merge":    {summary: "merge LoRAs into a checkpoint and write a new file", run: runMerge},
		"plugins":  {summary: "list built-in and installed plugins", run: runPlugins},
		"bench":    {summary: "time the model parts at real SD1.5 shapes", run: runBench},
		"dpg":      {summary: "generate DPG-Bench images (one grid per prompt; resumes)", run: runDPG},
		"plugin":   {summary: "run a built-in plugin (started by the host)", run: runPlugin, hidden: true},
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: sdbridge <command> [flags]\n\ncommands:")
	cmds := commands()
	names := make([]string, 0, len(cmds))
	for n, c := range cmds {
		if !c.hidden {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-9s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(os.Stderr, "\nrun 'sdbridge <command> -h' for the flags of a command")
}

// gcPercent keeps the heap close to the live set. The model weights (about
// 4 GB of float32 for SD1.5) are most of the live heap and live for the
// whole run; Go's default GOGC=100 would let short-lived activations grow
// the heap to twice that before collecting (9 GB peak at 512x512 measured,
// against 6 GB with 20). Collecting these pointer-free float slices costs
// little next to the compute. GOGC in the environment wins.
const gcPercent = 20

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	c, ok := commands()[os.Args[1]]
	if !ok {
		if os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
			usage()
			return
		}
		fmt.Fprintf(os.Stderr, "sdbridge: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err := c.run(os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "sdbridge %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
