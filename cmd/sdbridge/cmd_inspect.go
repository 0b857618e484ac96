// cmd_inspect.go: 'sdbridge inspect FILE...' prints what each model file is
// (human summary, or --json). It reads headers only.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"github.com/sdbridge/sdbridge/inspect"
)

func runInspect(args []string) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON instead of a summary")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: sdbridge inspect [--json] FILE|FOLDER...")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return fmt.Errorf("no file given")
	}
	var reports []*inspect.Report
	failed := 0
	for _, p := range fs.Args() {
		r, err := inspect.Path(p)
		if err != nil {
			fmt.Fprintf(os.Stderr, "sdbridge inspect: %v\n", err)
			failed++
			continue
		}
		reports = append(reports, r)
		if !*asJSON {
			r.Print(os.Stdout)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(reports); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d files could not be read", failed, fs.NArg())
	}
	return nil
}
