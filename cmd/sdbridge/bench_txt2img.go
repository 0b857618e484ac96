// bench_txt2img.go: the "txt2img" part of 'sdbridge bench': one whole image
// end to end, as 'sdbridge generate --lora --controlnet --ella' makes it,
// through the real pipeline and the real plugin processes, on random
// weights at the bench's shapes: an SD1.5 checkpoint (fp16), a rank-32 LoRA
// on every attention projection, an SD1.5 ControlNet (fp16), a FLAN-T5-XL
// encoder folder with a tokenizer of its own, and an ELLA connector of the
// release's structure between T5's d_model and the U-Net's context dim (at
// SD1.5 + FLAN-T5-XL exactly the released shapes). The files are written
// once into a temporary folder, or reused from --cache DIR; that write is
// reported apart (write_s).
//
// Phases, host clock, each in "phases": load (checkpoint to pipeline, on
// the device with --device cuda), the LoRA apply, the plugins' model loads
// (T5 + connector through a warm-up prompt, the ControlNet), the prompt
// encode (prompt and negative: T5 + ELLA's projection), the --steps
// sampling steps (total, mean, first, mean of the rest), the VAE decode and
// the PNG encode; and the plugins' share of the sampling (calls, time
// inside them). One run: --repeat does not apply. The part's ms is the
// image from the prompt with the models loaded (encode + sampling + decode
// + PNG); load_s is everything before it; total_s both. It does not check
// numerics (the golden tests do) beyond saying whether the image varies
// (pixel_std).
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/plugins/controlnet"
	"github.com/sdbridge/sdbridge/plugins/ella"
	"github.com/sdbridge/sdbridge/safetensors"
)

// txt2imgSettings are the "txt2img" part's flags.
type txt2imgSettings struct {
	// steps are the sampling steps (--steps, default benchTxt2ImgSteps;
	// must be at least 1).
	steps int
	cache string // folder keeping the model files between runs ("": a temporary one)
}

// benchTxt2ImgSteps is the step count.
const benchTxt2ImgSteps = 20

// The generation's prompt and settings (generate's defaults but the seed).
const (
	benchTxt2ImgPrompt   = "a photo of a red fox in a snowy forest at dawn, soft light, detailed fur"
	benchTxt2ImgNegative = "blurry, low quality, watermark, text"
	benchTxt2ImgLoRA     = 0.8 // LoRA strength on the U-Net and the text encoder
)

// addTxt2ImgFlags registers the "txt2img" part's flags on the bench's flag set.
func addTxt2ImgFlags(fs *flag.FlagSet) *txt2imgSettings {
	s := &txt2imgSettings{steps: benchTxt2ImgSteps}
	fs.Func("steps", fmt.Sprintf("sampling steps of the txt2img part (default %d)", benchTxt2ImgSteps), func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return fmt.Errorf("%q: want a step count in 1..1000", v)
		}
		s.steps = n
		return nil
	})
	fs.StringVar(&s.cache, "cache", "", "txt2img part: keep its random model files in `DIR` and reuse them (default: a temporary folder, removed)")
	return s
}

// txt2imgPhases are the part's figures (JSON "phases").
type txt2imgPhases struct {
	Size               int     `json:"size"`
	Steps              int     `json:"steps"`
	Sampler            string  `json:"sampler"`
	LoRARank           int     `json:"lora_rank"`
	WriteSec           float64 `json:"write_s"` // model files written (0 when reused from --cache)
	Cached             bool    `json:"cached"`
	LoadSec            float64 `json:"load_s"`        // checkpoint to pipeline (device upload included)
	LoRAMillis         float64 `json:"lora_ms"`       // LoRA apply through the plugin (its start included)
	PluginLoadSec      float64 `json:"plugin_load_s"` // ELLA (T5 + connector) and ControlNet loaded by the plugins
	EncodeMillis       float64 `json:"encode_ms"`     // prompt + negative: T5 and ELLA's projection
	SamplingMillis     float64 `json:"sampling_ms"`   // all steps (ELLA per step, ControlNet, U-Net CFG)
	StepMeanMillis     float64 `json:"step_mean_ms"`
	StepFirstMillis    float64 `json:"step_first_ms"`
	StepRestMeanMillis float64 `json:"step_rest_mean_ms"` // steps 2..n (0 with one step)
	DecodeMillis       float64 `json:"decode_ms"`
	PNGMillis          float64 `json:"png_ms"`
	TotalSec           float64 `json:"total_s"` // load to PNG, the files' write excluded
	// Plugin work during sampling: calls and wall time inside them
	// (compute + round trip), the ControlNet's host hand-off, and the
	// weights the LoRA patched on the device and on the host. ELLA's
	// calls are the batched whole-schedule ones plus per-step ones (for
	// timesteps off the schedule); ella_scheduled counts the steps served
	// from the batched output.
	ELLACalls           int     `json:"ella_calls"`
	ELLAScheduleCalls   int     `json:"ella_schedule_calls"`
	ELLAStepCalls       int     `json:"ella_step_calls"`
	ELLAScheduled       int     `json:"ella_scheduled"`
	ELLAPluginMillis    float64 `json:"ella_plugin_ms"`
	ControlNetCalls     int     `json:"controlnet_calls"`
	ControlNetMillis    float64 `json:"controlnet_plugin_ms"`
	ControlNetHandOffMs float64 `json:"controlnet_handoff_ms"`
	LoRADeviceTargets   int     `json:"lora_device_targets"`
	LoRAHostTargets     int     `json:"lora_host_targets"`
	PNGBytes            int     `json:"png_bytes"`
	PixelStd            float64 `json:"pixel_std"`       // of the RGB bytes: 0 for a constant image
	Image               string  `json:"image,omitempty"` // the PNG, kept with --cache
}

// txt2imgFiles are the part's model files.
type txt2imgFiles struct {
	dir, ckpt, vocab, merges, lora, controlnet, ella, t5, hint string
}

func newTxt2ImgFiles(dir string, px int) *txt2imgFiles {
	return &txt2imgFiles{dir: dir,
		ckpt: filepath.Join(dir, "sd15.safetensors"), vocab: filepath.Join(dir, "vocab.json"), merges: filepath.Join(dir, "merges.txt"),
		lora: filepath.Join(dir, "lora.safetensors"), controlnet: filepath.Join(dir, "controlnet.safetensors"),
		ella: filepath.Join(dir, "ella.safetensors"), t5: filepath.Join(dir, "t5"), hint: filepath.Join(dir, fmt.Sprintf("hint-%d.png", px))}
}

// txt2imgKey names the model files' shapes, so a --cache folder is reused
// only for the same layout, T5, connector and LoRA rank.
func (b *bench) txt2imgKey() (string, error) {
	js, err := json.Marshal([]any{b.layout.Specs(safetensors.F16), b.t5, b.txt2imgELLASpecs(), benchLoRARank})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(js)
	return hex.EncodeToString(sum[:8]), nil
}

// txt2imgFolder returns the folder of the model files, writing them unless
// --cache already holds them; remove is set for a temporary folder.
func (b *bench) txt2imgFolder() (f *txt2imgFiles, cached bool, remove func(), err error) {
	px := 8 * b.h
	remove = func() {}
	var dir string
	if b.txt2img.cache == "" {
		if dir, err = os.MkdirTemp("", "sdbridge-bench-txt2img-"); err != nil {
			return nil, false, remove, err
		}
		remove = func() { os.RemoveAll(dir) }
	} else {
		key, err := b.txt2imgKey()
		if err != nil {
			return nil, false, remove, err
		}
		dir = filepath.Join(b.txt2img.cache, "txt2img-"+key)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, false, remove, fmt.Errorf("--cache: %w", err)
		}
	}
	f = newTxt2ImgFiles(dir, px)
	done := filepath.Join(dir, "complete")
	if _, err := os.Stat(done); err == nil {
		cached = true
	} else if err := b.writeTxt2ImgModels(f); err != nil {
		return nil, false, remove, fmt.Errorf("writing the txt2img models to %s: %w", dir, err)
	} else if err := os.WriteFile(done, nil, 0o644); err != nil {
		return nil, false, remove, err
	}
	if _, err := os.Stat(f.hint); err != nil { // one per size
		if err := writeDemoHint(f.hint, px, px); err != nil {
			return nil, false, remove, fmt.Errorf("hint %s: %w", f.hint, err)
		}
	}
	return f, cached, remove, nil
}

// txt2imgELLASpecs is the connector of the part: the release's structure
// between the bench's T5 (input) and U-Net (width = time embedding =
// context dim); ella.ReleaseSpecs at SD1.5 + FLAN-T5-XL.
func (b *bench) txt2imgELLASpecs() []safetensors.Spec {
	w := b.layout.ContextDim
	return ella.ConnectorSpecs(safetensors.F16, w, w, ella.ReleaseTimeChannels, b.t5.DModel, ella.ReleaseLatents, ella.ReleaseLayers)
}

// writeTxt2ImgModels writes the checkpoint, LoRA, ControlNet, ELLA
// connector and T5 folder of the bench's shapes (random weights), the big
// files side by side (about 5.5 GB at the real shapes; one core each).
func (b *bench) writeTxt2ImgModels(f *txt2imgFiles) error {
	vocab, err := writeDemoTokenizer(f.vocab, f.merges)
	if err != nil {
		return err
	}
	if vocab > b.layout.CLIPVocab {
		return fmt.Errorf("CLIP vocabulary of %d tokens, the layout embeds %d", vocab, b.layout.CLIPVocab)
	}
	// The demo's T5 folder gives the tokenizer (its own pieces); config and
	// weights are then replaced by the bench's encoder.
	tiny, err := writeDemoT5(f.t5)
	if err != nil {
		return err
	}
	if tiny.VocabSize > b.t5.VocabSize {
		return fmt.Errorf("T5 tokenizer of %d pieces, the encoder embeds %d", tiny.VocabSize, b.t5.VocabSize)
	}
	cb, err := json.MarshalIndent(b.t5, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(f.t5, "config.json"), cb, 0o644); err != nil {
		return err
	}
	meta := map[string]string{"format": "pt", "sdbridge.bench": "random weights, SD1.5 key layout"}
	writes := []func() error{
		func() error { return models.WriteRandom(f.ckpt, b.layout.Specs(safetensors.F16), 1, meta) },
		func() error {
			return models.WriteRandom(f.controlnet, b.layout.ControlNetSpecs(safetensors.F16, "control_model."), 2, meta)
		},
		func() error {
			return models.WriteRandom(filepath.Join(f.t5, "model.safetensors"), models.T5Specs(b.t5, safetensors.F16), 4, map[string]string{"format": "pt"})
		},
		func() error {
			if _, err := writeDemoLoRA(f.lora, b.layout, benchLoRARank, 11); err != nil {
				return err
			}
			return models.WriteRandom(f.ella, b.txt2imgELLASpecs(), 3, nil)
		},
	}
	errs := make([]error, len(writes))
	var wg sync.WaitGroup
	for i, w := range writes {
		wg.Go(func() { errs[i] = w() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func benchTxt2Img(b *bench) (res benchResult, err error) {
	px, steps := 8*b.h, b.txt2img.steps
	if steps < 1 {
		return benchResult{}, fmt.Errorf("txt2img: %d steps", steps)
	}
	ph := &txt2imgPhases{Size: px, Steps: steps, Sampler: "euler_ancestral", LoRARank: benchLoRARank}
	t0 := time.Now()
	f, cached, remove, err := b.txt2imgFolder()
	defer remove()
	if err != nil {
		return benchResult{}, err
	}
	ph.WriteSec, ph.Cached = time.Since(t0).Seconds(), cached
	if cached {
		ph.WriteSec = 0
	}

	sup := b.plugins
	if sup == nil {
		if sup, err = host.NewSupervisor(host.Options{LogOutput: os.Stderr}); err != nil {
			return benchResult{}, err
		}
		defer sup.Close() // last: after the hooks and the pipeline's arenas
	}
	ctx := context.Background()
	start := time.Now()
	p, err := host.LoadPipeline(f.ckpt, host.LoadOptions{CLIPVocab: f.vocab, CLIPMerges: f.merges, Patchable: true, Device: b.dev})
	if err != nil {
		return benchResult{}, err
	}
	defer func() {
		if cerr := p.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	ph.LoadSec = time.Since(start).Seconds()

	t := time.Now()
	if err := p.UseLoRAs(ctx, sup, []host.LoRASpec{{Path: f.lora, UNet: benchTxt2ImgLoRA, TE: benchTxt2ImgLoRA}}); err != nil {
		return benchResult{}, err
	}
	ph.LoRAMillis = millis(time.Since(t))

	req := host.Request{Prompt: benchTxt2ImgPrompt, Negative: benchTxt2ImgNegative, Steps: steps, CFG: 7,
		Sampler: ph.Sampler, Schedule: "normal", Width: px, Height: px, Batch: 1, Seed: 1, NoiseKind: "comfy", SkipDecode: true}
	t = time.Now()
	ellaPlugin, err := host.BuiltinPlugin(sup, "ella")
	if err != nil {
		return benchResult{}, err
	}
	ellaPlugin.SetDevice(p.Device().ID())
	ellaOpt := host.ELLAOptions{ELLA: f.ella, T5: f.t5, Mode: host.ELLAFlexible, Heads: b.ella.heads,
		ContextDim: p.UNetConfig.ContextDim, StripWeights: true, CLIP: p.Prompts, GPU: p.GPU()}
	// A warm-up prompt has the plugin start and load T5 and the connector
	// (and upload them on a GPU), so encode_ms is the prompts' work alone.
	warm, err := host.NewELLAConditioner(ctx, ellaPlugin, ellaOpt, "warm up", "warm up negative")
	if err != nil {
		return benchResult{}, err
	}
	if err := warm.Close(); err != nil {
		return benchResult{}, fmt.Errorf("ella warm-up: %w", err)
	}
	hint, err := controlnet.PrepareHint(f.hint, px, px, controlnet.ResizeCrop, "none")
	if err != nil {
		return benchResult{}, fmt.Errorf("controlnet hint %s: %w", f.hint, err)
	}
	cnPlugin, err := host.BuiltinPlugin(sup, "controlnet")
	if err != nil {
		return benchResult{}, err
	}
	cnPlugin.SetDevice(p.Device().ID())
	src, err := host.NewControlNetSource(ctx, cnPlugin, host.ControlNetOptions{
		UNet: p.UNetConfig, Schedule: p.Schedule, ScheduleName: req.Schedule, Steps: steps,
		Batch: 1, CFG: req.CFG, Width: px, Height: px, GPU: p.GPU(),
	}, []host.ControlNetUnit{{Path: f.controlnet, Hint: hint, Strength: 1, End: 1}})
	if err != nil {
		return benchResult{}, err
	}
	defer src.Close()
	req.Residuals = src
	ph.PluginLoadSec = time.Since(t).Seconds()
	loadSec := time.Since(start).Seconds()

	gen := time.Now()
	cond, err := host.NewELLAConditioner(ctx, ellaPlugin, ellaOpt, req.Prompt, req.Negative)
	if err != nil {
		return benchResult{}, err
	}
	defer cond.Close()
	req.Conditioner = cond
	ph.EncodeMillis = millis(time.Since(gen))

	var stepEnds []time.Duration
	req.Progress = func(s host.Progress) { stepEnds = append(stepEnds, s.Elapsed) }
	t = time.Now()
	out, err := p.Generate(ctx, req)
	if err != nil {
		return benchResult{}, err
	}
	ph.SamplingMillis = millis(time.Since(t))
	if len(stepEnds) != steps {
		return benchResult{}, fmt.Errorf("sampling reported %d steps, want %d", len(stepEnds), steps)
	}
	ph.StepMeanMillis = ph.SamplingMillis / float64(steps)
	ph.StepFirstMillis = millis(stepEnds[0])
	if steps > 1 {
		ph.StepRestMeanMillis = millis(stepEnds[steps-1]-stepEnds[0]) / float64(steps-1)
	}

	t = time.Now()
	img, err := p.VAE.Decode(out.Latent) // [1, 3, H, W]
	if err != nil {
		return benchResult{}, fmt.Errorf("vae decode: %w", err)
	}
	ph.DecodeMillis = millis(time.Since(t))

	t = time.Now()
	rgba, err := host.ToRGBA(img, 0)
	if err != nil {
		return benchResult{}, err
	}
	var png bytes.Buffer
	if err := host.WritePNG(&png, rgba, fmt.Sprintf("%s\nNegative prompt: %s\nSteps: %d, Sampler: %s, CFG scale: 7, Seed: 1, Size: %dx%d",
		req.Prompt, req.Negative, steps, ph.Sampler, px, px)); err != nil {
		return benchResult{}, err
	}
	ph.PNGMillis = millis(time.Since(t))
	genMillis := millis(time.Since(gen))
	ph.TotalSec = time.Since(start).Seconds()
	ph.PNGBytes = png.Len()
	es, cs := cond.Stats(), src.Stats()
	ph.ELLACalls, ph.ELLAPluginMillis = es.Calls, millis(es.PluginTime)
	ph.ELLAScheduleCalls, ph.ELLAStepCalls, ph.ELLAScheduled = es.ScheduleCalls, es.StepCalls, es.Scheduled
	ph.ControlNetCalls, ph.ControlNetMillis, ph.ControlNetHandOffMs = cs.Calls, millis(cs.PluginTime), millis(cs.HandOff)
	ph.LoRADeviceTargets, ph.LoRAHostTargets = p.LoRATargets()
	if ph.PixelStd, err = rgbStd(rgba.Pix); err != nil {
		return benchResult{}, err
	}
	if b.txt2img.cache != "" {
		ph.Image = filepath.Join(f.dir, fmt.Sprintf("txt2img-%s-%d.png", strings.ReplaceAll(p.Device().ID(), ":", ""), px))
		if err := os.WriteFile(ph.Image, png.Bytes(), 0o644); err != nil {
			return benchResult{}, err
		}
	}
	res = b.result("txt2img lora+controlnet+ella", fmt.Sprintf("%dpx, %d steps, cfg 7", px, steps), genMillis, loadSec, timerHost)
	res.Phases = ph
	return res, nil
}

// rgbStd is the standard deviation of the R, G and B bytes of NRGBA pixels.
func rgbStd(pix []byte) (float64, error) {
	if len(pix) == 0 || len(pix)%4 != 0 {
		return 0, errors.New("image has no pixels")
	}
	var sum, sq float64
	n := 0
	for i := 0; i < len(pix); i += 4 {
		for _, v := range pix[i : i+3] {
			sum += float64(v)
			sq += float64(v) * float64(v)
			n++
		}
	}
	mean := sum / float64(n)
	return math.Sqrt(max(sq/float64(n)-mean*mean, 0)), nil
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
