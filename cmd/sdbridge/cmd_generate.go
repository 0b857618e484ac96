// cmd_generate.go: 'sdbridge generate' runs txt2img on a single-file SD1.x
// checkpoint and writes PNG files carrying A1111's "parameters" infotext.
// Progress (step, it/s, ETA) goes to stderr. Bad input is refused before the
// model is loaded: sizes that are not multiples of 8, an empty prompt (A1111
// allows it for an unconditional image; here it must be asked for with
// --allow-empty-prompt, since it is far more often a shell quoting mistake),
// unknown samplers and schedules (the valid names are listed), pickle
// checkpoints; after loading, SDXL checkpoints are refused by name and a
// checkpoint without VAE asks for --vae FILE.
//
// Plugins: --lora FILE:0.8[:te=0.5][:blocks=...] (repeatable; host.ParseMergeLoRA
// syntax) patches the U-Net and text encoder in shared memory through the
// LoRA plugin before any step (a LoRA that does not apply, e.g. one for
// SDXL, is refused then); the ControlNet flags (generate_controlnet.go) and
// the ELLA flags (generate_ella.go) add their hooks to the request. All
// plugins of a generation run under one Supervisor, closed last. The PNG
// infotext records them as A1111 does (LoRA tags and hashes, ControlNet
// units, ELLA fields). It does not implement the plugins' flags.
package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"image"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sdbridge/sdbridge/host"
)

// generateOptions are the parsed flags of 'generate'.
type generateOptions struct {
	model, vae, clipTokenizer string
	prompt, negative          string
	allowEmptyPrompt          bool
	steps                     int
	cfg                       float64
	sampler, scheduler, noise string
	seed                      int64
	width, height, batch      int
	clipSkip                  int
	out                       string
	plainPrompt               bool
	loras                     []host.LoRASpec
	controlnet                *controlNetOpts
	ella                      *ellaOpts
	thirdParty                *pluginOpts // --plugin (generate_plugins.go)
	device                    *deviceFlags
	// plugins, when set (tests), runs the plugins under this supervisor
	// instead of a fresh one closed at the end.
	plugins *host.Supervisor
}

func parseGenerateFlags(args []string, stderr io.Writer) (*generateOptions, error) {
	o := &generateOptions{}
	fs := flag.NewFlagSet("generate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.model, "model", "", "checkpoint `FILE` (.safetensors, SD 1.x single file)")
	fs.StringVar(&o.vae, "vae", "", "separate VAE `FILE` (for checkpoints without one, or to replace it)")
	fs.StringVar(&o.clipTokenizer, "clip-tokenizer", "", "`DIR` holding CLIP's vocab.json and merges.txt")
	fs.StringVar(&o.prompt, "prompt", "", "prompt (A1111 syntax: (word:1.2), [word], BREAK)")
	fs.StringVar(&o.negative, "negative", "", "negative prompt")
	fs.BoolVar(&o.allowEmptyPrompt, "allow-empty-prompt", false, "allow an empty prompt (unconditional image)")
	fs.IntVar(&o.steps, "steps", 20, "sampling steps")
	fs.Float64Var(&o.cfg, "cfg", 7, "classifier-free guidance scale")
	fs.StringVar(&o.sampler, "sampler", "euler_ancestral", "sampler: "+strings.Join(host.SamplerNames, ", "))
	fs.StringVar(&o.scheduler, "scheduler", "normal", "sigma schedule: "+strings.Join(host.ScheduleNames, ", "))
	fs.StringVar(&o.noise, "noise", "comfy", "seed convention: comfy (torch CPU generator, = ComfyUI and A1111 'CPU') or a1111 (A1111 'NV' Philox, = A1111 on NVIDIA GPUs)")
	fs.Int64Var(&o.seed, "seed", -1, "seed; -1 picks a random one")
	fs.IntVar(&o.width, "width", 512, "image width in pixels (multiple of 8)")
	fs.IntVar(&o.height, "height", 512, "image height in pixels (multiple of 8)")
	fs.IntVar(&o.batch, "batch", 1, "images to generate together")
	fs.IntVar(&o.clipSkip, "clip-skip", 1, "CLIP layers to skip from the end (A1111 'Clip skip'; 2 for many anime models)")
	fs.StringVar(&o.out, "o", "out.png", "output `FILE`; a batch writes FILE-0.png, FILE-1.png, ...")
	fs.BoolVar(&o.plainPrompt, "plain-prompt", false, "no A1111 syntax or chunking: ids cut to 77 tokens (the reference behaviour)")
	fs.Func("lora", "LoRA `FILE[:STRENGTH][:te=X][:unet=X][:blocks=V]` (repeatable; STRENGTH sets both, default 1; blocks: 17/26 values or a preset such as INS)", func(v string) error {
		l, err := host.ParseMergeLoRA(v)
		if err != nil {
			return err
		}
		o.loras = append(o.loras, l)
		return nil
	})
	o.controlnet = controlNetFlags(fs)
	o.ella = ellaFlags(fs)
	o.thirdParty = pluginFlags(fs)
	o.device = addDeviceFlags(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: sdbridge generate --model FILE --prompt TEXT [flags]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q (quote the prompt: --prompt \"a cat\")", fs.Args())
	}
	return o, o.validate()
}

// validate refuses bad input before any file is read.
func (o *generateOptions) validate() error {
	var errs []string
	if o.model == "" {
		errs = append(errs, "--model FILE is required")
	} else if ext := strings.ToLower(filepath.Ext(o.model)); ext == ".ckpt" || ext == ".pt" || ext == ".pth" || ext == ".bin" {
		errs = append(errs, fmt.Sprintf("--model %s: pickle checkpoints (%s) are not supported (they can run code when loaded); convert it to .safetensors", o.model, ext))
	}
	if strings.TrimSpace(o.prompt) == "" && !o.allowEmptyPrompt {
		errs = append(errs, "empty prompt: give --prompt TEXT (or --allow-empty-prompt for an unconditional image)")
	}
	if o.width <= 0 || o.height <= 0 || o.width%8 != 0 || o.height%8 != 0 {
		errs = append(errs, fmt.Sprintf("--width %d --height %d: both must be positive multiples of 8 (e.g. 512x512, 512x768)", o.width, o.height))
	}
	errs = append(errs, stepsCFGProblems(o.steps, o.cfg)...)
	if o.batch < 1 {
		errs = append(errs, fmt.Sprintf("--batch %d: must be at least 1", o.batch))
	}
	if o.clipSkip < 1 {
		errs = append(errs, fmt.Sprintf("--clip-skip %d: must be at least 1 (1 = last layer)", o.clipSkip))
	}
	if o.seed < -1 {
		errs = append(errs, fmt.Sprintf("--seed %d: must be -1 (random) or non-negative", o.seed))
	}
	errs = append(errs, samplingNameProblems(o.sampler, o.scheduler, o.noise)...)
	for _, l := range o.loras {
		if st, err := os.Stat(l.Path); err != nil {
			errs = append(errs, fmt.Sprintf("--lora: %v", err))
		} else if st.IsDir() {
			errs = append(errs, fmt.Sprintf("--lora %s: is a folder, want a .safetensors file", l.Path))
		}
	}
	if o.controlnet.enabled() {
		for i, u := range o.controlnet.units {
			if u.image == "" {
				errs = append(errs, fmt.Sprintf("--controlnet %s (#%d) has no --control-image", u.path, i+1))
			} else if _, err := os.Stat(u.image); err != nil {
				errs = append(errs, fmt.Sprintf("--control-image: %v", err))
			}
		}
	}
	errs = append(errs, o.ella.problems()...)
	if o.device != nil {
		errs = append(errs, o.device.problems()...)
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n  "))
	}
	return nil
}

// stepsCFGProblems checks --steps and --cfg, shared by generate and dpg.
func stepsCFGProblems(steps int, cfg float64) []string {
	var errs []string
	if steps < 1 || steps > 1000 {
		errs = append(errs, fmt.Sprintf("--steps %d: must be in 1..1000", steps))
	}
	if cfg < 0 {
		errs = append(errs, fmt.Sprintf("--cfg %v: must not be negative", cfg))
	}
	return errs
}

// samplingNameProblems checks the --sampler, --scheduler and --noise names,
// shared by generate and dpg.
func samplingNameProblems(sampler, scheduler, noise string) []string {
	var errs []string
	if _, err := host.LookupSampler(sampler); err != nil {
		errs = append(errs, "--sampler: "+err.Error())
	}
	if !slices.Contains(host.ScheduleNames, scheduler) {
		errs = append(errs, fmt.Sprintf("--scheduler: unknown schedule %q (valid: %s)", scheduler, strings.Join(host.ScheduleNames, ", ")))
	}
	if !slices.Contains(host.NoiseKinds, noise) {
		errs = append(errs, fmt.Sprintf("--noise: unknown %q (valid: %s)", noise, strings.Join(host.NoiseKinds, ", ")))
	}
	return errs
}

// outputPaths names the files of a batch.
func (o *generateOptions) outputPaths() []string {
	if o.batch == 1 {
		return []string{o.out}
	}
	ext := filepath.Ext(o.out)
	if ext == "" {
		ext = ".png"
	}
	base := strings.TrimSuffix(o.out, filepath.Ext(o.out))
	paths := make([]string, o.batch)
	for i := range paths {
		paths[i] = fmt.Sprintf("%s-%d%s", base, i, ext)
	}
	return paths
}

// runGenerate implements 'sdbridge generate'.
func runGenerate(args []string) error {
	o, err := parseGenerateFlags(args, os.Stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	return generate(ctx, o, os.Stderr)
}

func generate(ctx context.Context, o *generateOptions, stderr io.Writer) error {
	seed := uint64(o.seed)
	if o.seed < 0 {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		seed = uint64(binary.LittleEndian.Uint32(b[:])) // A1111 picks seeds below 2^32
	}
	hash := make(chan string, 1)
	go func() { // A1111's AutoV2 hash reads the whole file; overlap it with loading
		h, err := host.AutoV2Hash(o.model)
		if err != nil {
			h = ""
		}
		hash <- h
	}()

	sup := o.plugins
	if sup == nil && (len(o.loras) > 0 || o.controlnet.enabled() || o.ella.enabled() || o.thirdParty.enabled()) {
		var err error
		if sup, err = host.NewSupervisor(host.Options{LogOutput: stderr}); err != nil {
			return err
		}
		defer sup.Close() // last: after the hooks and the model arenas
	}

	if err := o.thirdParty.start(ctx, sup); err != nil { // before loading: parameter errors come fast
		return err
	}

	dev := host.CPUDevice()
	if o.device != nil {
		var err error
		if dev, err = o.device.open(stderr); err != nil {
			return err
		}
	}
	defer dev.Close() // after the pipeline's device copies are freed

	t0 := time.Now()
	mode := host.PromptA1111
	if o.plainPrompt {
		mode = host.PromptTruncate
	}
	p, err := host.LoadPipeline(o.model, host.LoadOptions{
		VAEPath: o.vae, CLIPTokenizerDir: o.clipTokenizer, ClipSkip: o.clipSkip, PromptMode: mode,
		Patchable: len(o.loras) > 0 || o.thirdParty.patches(), Device: dev,
	})
	if err != nil {
		return err
	}
	defer p.Close()
	fmt.Fprintf(stderr, "loaded %s in %.1fs on %s; seed %d, %d steps of %s (%s), cfg %g, %dx%d, batch %d\n",
		filepath.Base(o.model), time.Since(t0).Seconds(), dev, seed, o.steps, o.sampler, o.scheduler, o.cfg, o.width, o.height, o.batch)

	req := host.Request{
		Prompt: o.prompt, Negative: o.negative,
		Steps: o.steps, CFG: o.cfg, Sampler: o.sampler, Schedule: o.scheduler,
		Width: o.width, Height: o.height, Batch: o.batch, Seed: seed, NoiseKind: o.noise,
	}
	cleanup, err := o.installPlugins(ctx, sup, p, &req, stderr)
	defer cleanup()
	if err != nil {
		return err
	}
	cleanup3p, err := o.thirdParty.install(ctx, sup, p, &req, stderr)
	defer cleanup3p()
	if err != nil {
		return err
	}

	progress := newProgressPrinter(stderr)
	req.Progress = progress.step
	res, err := p.Generate(ctx, req)
	progress.done()
	if err != nil {
		return err
	}
	params := host.Parameters{
		Prompt: o.prompt, Negative: o.negative, Steps: o.steps, Sampler: o.sampler, Schedule: o.scheduler,
		CFG: o.cfg, Seed: seed, Width: o.width, Height: o.height,
		ModelHash: <-hash, ModelName: strings.TrimSuffix(filepath.Base(o.model), filepath.Ext(o.model)),
		ClipSkip: o.clipSkip, NoiseKind: o.noise, BatchSize: o.batch,
	}
	if o.vae != "" {
		params.VAEName = filepath.Base(o.vae)
	}
	if err := o.pluginInfotext(&params); err != nil {
		return err
	}
	o.thirdParty.infotext(&params)
	for i, path := range o.outputPaths() {
		img, err := host.ToRGBA(res.Image, i)
		if err != nil {
			return err
		}
		pi := params
		pi.BatchPos = i
		if o.noise == "a1111" {
			pi.Seed = seed + uint64(i) // A1111 gives image i the seed seed+i
		}
		if err := writePNGFile(path, img, pi.String()); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "wrote %s\n", path)
	}
	return nil
}

// installPlugins applies the LoRAs to p (before any step) and sets the
// ELLA conditioner and the ControlNet source on req, all under sup. Call
// cleanup after the generation, even after an error.
func (o *generateOptions) installPlugins(ctx context.Context, sup *host.Supervisor, p *host.Loaded, req *host.Request, stderr io.Writer) (cleanup func(), err error) {
	var closers []func() error
	cleanup = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	if len(o.loras) > 0 {
		t0 := time.Now()
		if err := p.UseLoRAs(ctx, sup, o.loras); err != nil {
			return cleanup, err
		}
		for _, l := range o.loras {
			fmt.Fprintf(stderr, "LoRA %s: unet %g, te %g\n", filepath.Base(l.Path), l.UNet, l.TE)
		}
		fmt.Fprintf(stderr, "applied %d LoRA(s) through the lora plugin in %.2fs\n", len(o.loras), time.Since(t0).Seconds())
		if dev, host := p.LoRATargets(); dev > 0 {
			fmt.Fprintf(stderr, "LoRA targets: %d weights patched on the device, %d on the host (re-uploaded)\n", dev, host)
		}
	}
	if o.ella.enabled() {
		cond, err := newELLAConditioner(ctx, o.ella, sup, p, o.prompt, o.negative)
		if err != nil {
			return cleanup, err
		}
		closers = append(closers, cond.Close)
		req.Conditioner = cond
		fmt.Fprintln(stderr, o.ella.label())
	}
	if o.controlnet.enabled() {
		src, err := o.controlnet.residualSource(ctx, sup, p, req)
		if err != nil {
			return cleanup, err
		}
		closers = append(closers, src.Close)
		req.Residuals = src
		fmt.Fprintf(stderr, "%d ControlNet unit(s)\n", len(o.controlnet.units))
	}
	return cleanup, nil
}

// pluginInfotext adds the plugins' A1111 infotext: LoRA tags on the prompt
// and their hashes, one field per ControlNet unit, the ELLA setup.
func (o *generateOptions) pluginInfotext(params *host.Parameters) error {
	if len(o.loras) > 0 {
		tags, hashes, err := host.LoRAInfotext(o.loras)
		if err != nil {
			return err
		}
		params.Prompt += tags
		params.Extra = append(params.Extra, hashes)
	}
	if o.controlnet.enabled() {
		for i, u := range o.controlnet.units {
			params.Extra = append(params.Extra, host.ControlNetInfotext(i, host.ControlNetInfo{
				Preprocess: u.preprocess, Model: u.path, Weight: u.strength, Resize: u.resize,
				Start: u.start, End: u.end, Guess: u.guess,
			}))
		}
	}
	params.Extra = append(params.Extra, o.ella.infoFields()...)
	return nil
}

func writePNGFile(path string, img image.Image, text string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := host.WritePNG(f, img, text); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}

// progressPrinter prints "step i/n, it/s, ETA" lines; on a terminal it
// rewrites one line.
type progressPrinter struct {
	w    io.Writer
	tty  bool
	last bool
}

func newProgressPrinter(w io.Writer) *progressPrinter {
	p := &progressPrinter{w: w}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progressPrinter) step(s host.Progress) {
	secs := s.Elapsed.Seconds()
	rate := float64(s.Step) / max(secs, 1e-9)
	eta := time.Duration(float64(s.Steps-s.Step) / rate * float64(time.Second)).Round(time.Second)
	line := fmt.Sprintf("step %d/%d  %.2f it/s  ETA %s", s.Step, s.Steps, rate, eta)
	if rate < 1 {
		line = fmt.Sprintf("step %d/%d  %.2f s/it  ETA %s", s.Step, s.Steps, 1/rate, eta)
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r%-60s", line)
		p.last = true
	} else {
		fmt.Fprintln(p.w, line)
	}
}

func (p *progressPrinter) done() {
	if p.last {
		fmt.Fprintln(p.w)
		p.last = false
	}
}
