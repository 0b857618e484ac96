// cmd_merge.go: 'sdbridge merge --model CKPT --lora FILE:0.8[:te=0.5][:blocks=V]
// ... -o OUT.safetensors [--dtype keep|fp16|bf16|fp32]' writes a checkpoint
// with LoRAs merged in (host/merge.go does the work), with a progress bar on
// stderr; --device cuda computes the merges on the GPU (host/merge_gpu.go).
// It only parses flags and draws the bar; it does not merge itself.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sdbridge/sdbridge/host"
)

// runMerge implements 'sdbridge merge'.
func runMerge(args []string) error {
	fs := flag.NewFlagSet("merge", flag.ContinueOnError)
	model := fs.String("model", "", "input SD1.5 checkpoint (.safetensors)")
	var out string
	fs.StringVar(&out, "o", "", "output .safetensors file")
	fs.StringVar(&out, "out", "", "same as -o")
	dtype := fs.String("dtype", "keep", "dtype of floating-point tensors in the output: keep, fp16, bf16 or fp32")
	force := fs.Bool("force", false, "replace an existing output file (never the input)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	devFlags := addDeviceFlags(fs)
	var loras []host.MergeLoRA
	fs.Func("lora", "LoRA to merge, repeatable: FILE[:STRENGTH][:te=X][:unet=X][:blocks=17-or-26-values|PRESET]", func(s string) error {
		l, err := host.ParseMergeLoRA(s)
		if err != nil {
			return err
		}
		loras = append(loras, l)
		return nil
	})
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: sdbridge merge --model CKPT --lora FILE:0.8[:te=0.5][:blocks=V] ... -o OUT.safetensors [--dtype keep|fp16|bf16|fp32]")
		fmt.Fprintln(fs.Output(), "block-weight presets: NONE, ALL, INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL, ALL0.5")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	case *model == "":
		return fmt.Errorf("--model is required")
	case len(loras) == 0:
		return fmt.Errorf("at least one --lora is required")
	case out == "":
		return fmt.Errorf("-o OUT.safetensors is required")
	case !strings.HasSuffix(strings.ToLower(out), ".safetensors"):
		return fmt.Errorf("output %s: the name must end in .safetensors", out)
	}
	dev, err := devFlags.open(os.Stderr)
	if err != nil {
		return err
	}
	defer dev.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bar := &progressBar{w: os.Stderr}
	opts := host.MergeOptions{Model: *model, LoRAs: loras, Out: out, DType: *dtype, Force: *force, GPU: dev.GPU}
	if !*quiet {
		opts.Progress = bar.update
	}
	st, err := host.Merge(ctx, opts)
	bar.finish()
	if err != nil {
		return err
	}
	mbs := float64(st.Bytes) / 1e6 / st.Elapsed.Seconds()
	fmt.Fprintf(os.Stderr, "wrote %s: %d tensors (%d merged on %s), %.1f MB in %.2fs (%.0f MB/s)\n",
		out, st.Tensors, st.Touched, dev, float64(st.Bytes)/1e6, st.Elapsed.Seconds(), mbs)
	for _, l := range st.LoRAs {
		fmt.Fprintf(os.Stderr, "  merged %s [%s] unet=%g te=%g\n", l.File, l.AutoV2, l.UNet, l.TE)
	}
	return nil
}

// progressBar draws "[=====>    ] 512/1131 tensors  1.0/2.1 GB  350 MB/s"
// on one line, at most every 100 ms.
type progressBar struct {
	w     io.Writer
	last  time.Time
	drawn bool
}

func (b *progressBar) update(p host.MergeProgress) {
	if p.Done != p.Total && time.Since(b.last) < 100*time.Millisecond {
		return
	}
	b.last = time.Now()
	const width = 30
	filled := width
	if p.TotalBytes > 0 {
		filled = int(int64(width) * p.Bytes / p.TotalBytes)
	}
	bar := strings.Repeat("=", filled)
	if filled < width {
		bar += ">" + strings.Repeat(" ", width-filled-1)
	}
	rate := 0.0
	if s := p.Elapsed.Seconds(); s > 0 {
		rate = float64(p.Bytes) / 1e6 / s
	}
	fmt.Fprintf(b.w, "\r[%s] %d/%d tensors  %.1f/%.1f MB  %.0f MB/s ", bar, p.Done, p.Total,
		float64(p.Bytes)/1e6, float64(p.TotalBytes)/1e6, rate)
	b.drawn = true
}

func (b *progressBar) finish() {
	if b.drawn {
		fmt.Fprintln(b.w)
		b.drawn = false
	}
}
