// cmd_demo.go: 'sdbridge demo', the README's main job. It makes tiny
// SD1.5-structured models itself (random weights in the real key layouts, a
// vocabulary of its own; nothing is downloaded), then runs one real
// generation through the same code path as 'sdbridge generate', with LoRA,
// ControlNet and ELLA each in its own plugin process, writes demo.png and
// prints what ran and how long each part took. The weights are random, so
// the picture is structured noise: the demo shows the machinery, not art.
// --device (cpu | cuda | auto) is passed on to the generation.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/sdbridge/sdbridge/host"
)

func runDemo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	out := fs.String("o", "demo.png", "output PNG")
	dir := fs.String("dir", "", "folder for the tiny models (default: a temporary folder, removed afterwards)")
	steps := fs.Int("steps", 12, "sampling steps")
	size := fs.Int("size", 256, "image width and height in pixels (multiple of 8)")
	seed := fs.Int64("seed", 42, "seed")
	plain := fs.Bool("no-plugins", false, "run the plain pipeline without LoRA, ControlNet and ELLA")
	dev := addDeviceFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if errs := dev.problems(); len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	keep := *dir != ""
	if !keep {
		tmp, err := os.MkdirTemp("", "sdbridge-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		*dir = tmp
	} else if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}

	t0 := time.Now()
	files, err := writeDemoModels(*dir)
	if err != nil {
		return fmt.Errorf("making the demo models: %w", err)
	}
	made := time.Since(t0)
	fmt.Printf("sdbridge demo: made tiny SD1.5-structured models in %v (in %s)\n", made.Round(time.Millisecond), *dir)
	for _, p := range []string{files.Checkpoint, files.LoRA, files.ControlNet, files.ELLA, files.T5, files.Vocab} {
		fmt.Printf("  %-28s %s\n", filepath.Base(p), sizeOf(p))
	}

	genArgs := []string{
		"--model", files.Checkpoint, "--clip-tokenizer", files.Dir,
		"--prompt", "a photo of a red fox in a snowy forest at dawn, (soft light:1.2)",
		"--negative", "blurry, low quality",
		"--steps", fmt.Sprint(*steps), "--cfg", "6", "--sampler", "dpmpp_2m", "--scheduler", "karras",
		"--seed", fmt.Sprint(*seed), "--width", fmt.Sprint(*size), "--height", fmt.Sprint(*size), "-o", *out,
	}
	genArgs = append(genArgs, dev.args()...)
	if !*plain {
		genArgs = append(genArgs,
			"--lora", files.LoRA+":0.8:te=0.6",
			"--controlnet", files.ControlNet, "--control-image", files.Hint, "--control-preprocess", "canny", "--control-strength", "0.9",
			"--ella", files.ELLA, "--t5", files.T5, "--ella-mode", "concat")
	}
	fmt.Printf("sdbridge demo: running the equivalent of\n  sdbridge generate %s\n", quoteArgs(genArgs, files.Dir))
	o, err := parseGenerateFlags(genArgs, os.Stderr)
	if err != nil {
		return err
	}
	t1 := time.Now()
	if err := generate(ctx, o, os.Stderr); err != nil {
		return err
	}
	gen := time.Since(t1)

	b, err := os.ReadFile(*out)
	if err != nil {
		return err
	}
	text, err := host.ReadPNGText(b)
	if err != nil {
		return fmt.Errorf("reading back %s: %w", *out, err)
	}
	fmt.Printf("sdbridge demo: wrote %s (%s) in %v (models %v, generation %v)\n", *out, sizeOf(*out),
		(made + gen).Round(time.Millisecond), made.Round(time.Millisecond), gen.Round(time.Millisecond))
	fmt.Printf("  parameters: %s\n", strings.ReplaceAll(text["parameters"], "\n", "\n              "))
	return nil
}

func sizeOf(path string) string {
	var n int64
	filepath.Walk(path, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}

// quoteArgs prints args for a shell, with the demo folder shortened.
func quoteArgs(args []string, dir string) string {
	var parts []string
	for _, a := range args {
		a = strings.ReplaceAll(a, dir, "$DEMO")
		if strings.ContainsAny(a, " ,():") {
			a = "'" + a + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}
