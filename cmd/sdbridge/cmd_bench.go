// cmd_bench.go: 'sdbridge bench' times the model parts at real SD1.5 shapes
// with random weights (no checkpoint needed), so users can size their
// hardware: U-Net CFG step (batch 2), VAE decode, CLIP encode, and on
// request the plugin parts (--parts controlnet,t5,ella,lora-swap) and a whole
// image with the three plugins (txt2img, bench_txt2img.go). Each part is
// loaded, run once to warm up, then timed over --repeat runs (the median is
// reported). With --device cuda each part runs as its models.*CUDA type on
// device tensors where it has such an API, timed with CUDA events; the
// report (--json) names the card, the driver and the dtype with the
// figures. It does not check numerics (the golden tests do).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"time"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/ella"
	"github.com/sdbridge/sdbridge/safetensors"
)

// Timers: how a part's figure was measured.
const (
	timerHost   = "host clock"  // wall time of the call, CPU tensors in and out
	timerEvents = "cuda events" // device time between events around the queued work
)

type benchResult struct {
	Part    string  `json:"part"`
	Shape   string  `json:"shape"`
	Millis  float64 `json:"ms"`
	LoadSec float64 `json:"load_s"`
	Device  string  `json:"device"` // where the part ran: cpu or cuda
	Timer   string  `json:"timer"`
	// Phases are the figures of the "txt2img" part (bench_txt2img.go).
	Phases *txt2imgPhases `json:"phases,omitempty"`
}

type benchReport struct {
	host.DeviceInfo               // device, card, driver, cuda_driver, dtype
	Size            int           `json:"size"`
	Repeat          int           `json:"repeat"`
	Threads         int           `json:"threads"`
	BLAS            string        `json:"blas"`
	Results         []benchResult `json:"results"`
}

// bench is one run's setting, shared by the parts.
type bench struct {
	dev    *host.Device
	repeat int
	h      int // latent side
	layout models.Layout
	src    models.Source // random weights of layout (fp16)
	t5     models.T5Config
	ella   ellaShape
	// txt2img are the "txt2img" part's settings (--steps, --cache).
	txt2img txt2imgSettings
	// plugins, when set (tests), serves the LoRA plugin of "lora-swap";
	// else that part starts its own supervisor.
	plugins *host.Supervisor
}

// ellaShape is the connector the "ella" part times: its tensors and the
// width of the text features it takes.
type ellaShape struct {
	specs []safetensors.Spec
	din   int
	heads int
}

// newBench is the setting of a real run: SD1.5, FLAN-T5-XL and the
// released ELLA connector at image size px.
func newBench(dev *host.Device, px, repeat int) *bench {
	layout := models.SD15()
	return &bench{dev: dev, repeat: max(repeat, 1), h: px / 8, layout: layout,
		src: models.NewRandomSource(layout.Specs(safetensors.F16), 1), t5: flanT5XL,
		ella: ellaShape{specs: ella.ReleaseSpecs(), din: ella.ReleaseInputDim, heads: models.ELLADefaultHeads}}
}

// benchParts are the parts by --parts name.
var benchParts = map[string]func(b *bench) (benchResult, error){
	"unet":       benchUNet,
	"vae":        benchVAE,
	"clip":       benchCLIP,
	"controlnet": benchControlNet,
	"t5":         benchT5,
	"ella":       benchELLA,
	"lora-swap":  benchLoRASwap,
	"txt2img":    benchTxt2Img,
}

func runBench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	size := fs.Int("size", 512, "image size in pixels (multiple of 8)")
	repeat := fs.Int("repeat", 1, "timed runs per part (after one warm-up run)")
	asJSON := fs.Bool("json", false, "print JSON")
	parts := fs.String("parts", "clip,vae,unet", "comma-separated parts to time: unet, vae, clip, controlnet, ella, t5, lora-swap, txt2img")
	t2i := addTxt2ImgFlags(fs)
	devFlags := addDeviceFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *size <= 0 || *size%8 != 0 {
		return fmt.Errorf("--size %d: must be a positive multiple of 8", *size)
	}
	names := splitList(*parts)
	for _, part := range names {
		if _, ok := benchParts[part]; !ok {
			return fmt.Errorf("--parts: unknown part %q (unet, vae, clip, controlnet, ella, t5, lora-swap, txt2img)", part)
		}
	}
	dev, err := devFlags.open(os.Stderr)
	if err != nil {
		return err
	}
	defer dev.Close()
	b := newBench(dev, *size, *repeat)
	b.txt2img = *t2i
	rep := benchReport{DeviceInfo: dev.Info(), Size: *size, Repeat: b.repeat, Threads: runtime.GOMAXPROCS(0), BLAS: nn.GemmBackend()}
	if !*asJSON && dev.OnGPU() {
		fmt.Printf("device %s (driver %s, CUDA %s)\n", dev, rep.Driver, rep.CUDADriver)
	}
	for _, part := range names {
		res, err := benchParts[part](b)
		if err != nil {
			return fmt.Errorf("bench %s: %w", part, err)
		}
		rep.Results = append(rep.Results, res)
		if !*asJSON {
			fmt.Printf("%-28s %-26s %10.2f ms   (load %.1f s, %s, %s)\n", res.Part, res.Shape, res.Millis, res.LoadSec, res.Device, res.Timer)
		}
		runtime.GC()
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return nil
}

// result fills the device fields of a part's result.
func (b *bench) result(part, shape string, ms, load float64, timer string) benchResult {
	d := host.DeviceCPU
	if timer == timerEvents || b.dev.OnGPU() {
		d = host.DeviceCUDA
	}
	return benchResult{Part: part, Shape: shape, Millis: ms, LoadSec: load, Device: d, Timer: timer}
}

// time times fn on the bench's device: CUDA events around the work fn
// queues on a GPU (one warm-up run first), else the host clock.
func (b *bench) time(fn func() error) (ms float64, timer string, err error) {
	if !b.dev.OnGPU() {
		ms, err = timeIt(b.repeat, fn)
		return ms, timerHost, err
	}
	if err := fn(); err != nil {
		return 0, "", err
	}
	dev := b.dev.GPU.Dev
	var all []float64
	for range b.repeat {
		d, err := dev.Time(fn)
		if err != nil {
			return 0, "", err
		}
		all = append(all, float64(d.Microseconds())/1000)
	}
	slices.Sort(all)
	return all[len(all)/2], timerEvents, nil
}

// timeIt runs fn once to warm up, then repeat times, and returns the median.
func timeIt(repeat int, fn func() error) (float64, error) {
	if err := fn(); err != nil {
		return 0, err
	}
	var ms []float64
	for range max(repeat, 1) {
		t := time.Now()
		if err := fn(); err != nil {
			return 0, err
		}
		ms = append(ms, float64(time.Since(t).Microseconds())/1000)
	}
	slices.Sort(ms)
	return ms[len(ms)/2], nil
}

func randomTensor(seed uint64, shape ...int) *nn.Tensor {
	t := nn.New(shape...)
	s := seed*0x9e3779b97f4a7c15 + 1
	for i := range t.Data {
		s ^= s << 13
		s ^= s >> 7
		s ^= s << 17
		t.Data[i] = float32(s>>40)/float32(1<<24)*2 - 1
	}
	return t
}

func benchUNet(b *bench) (benchResult, error) {
	t0 := time.Now()
	u, err := models.LoadUNet(models.NewWeights(b.src).Sub("model.diffusion_model."))
	if err != nil {
		return benchResult{}, err
	}
	x := randomTensor(1, 2, 4, b.h, b.h)               // [2, 4, h, w]: uncond + cond
	ctx := randomTensor(2, 2, 77, b.layout.ContextDim) // [2, 77, 768]
	ts := []float32{500, 500}                          // [2]
	part, shape := "unet cfg step (batch 2)", fmt.Sprintf("x [2,4,%d,%d]", b.h, b.h)
	if !b.dev.OnGPU() {
		load := time.Since(t0).Seconds()
		ms, timer, err := b.time(func() error { _, err := u.Forward(x, ts, ctx, nil); return err })
		return b.result(part, shape, ms, load, timer), err
	}
	g := b.dev.GPU
	gu, err := models.NewUNetCUDA(g, u)
	if err != nil {
		return benchResult{}, err
	}
	defer gu.Close()
	load := time.Since(t0).Seconds()
	dx, err := g.Upload(x) // [2, 4, h, w]
	if err != nil {
		return benchResult{}, err
	}
	defer dx.Free()
	dctx, err := g.Upload(ctx) // [2, 77, 768]
	if err != nil {
		return benchResult{}, err
	}
	defer dctx.Free()
	ms, timer, err := b.time(func() error { return freeAfter(gu.ForwardGPU(dx, ts, dctx, nil)) })
	return b.result(part, shape, ms, load, timer), err
}

func benchVAE(b *bench) (benchResult, error) {
	t0 := time.Now()
	v, err := models.LoadVAEDecoder(models.NewWeights(b.src).Sub("first_stage_model."), 0)
	if err != nil {
		return benchResult{}, err
	}
	var dec host.ImageDecoder = v
	if b.dev.OnGPU() {
		gv, err := models.NewVAEDecoderCUDA(b.dev.GPU, v)
		if err != nil {
			return benchResult{}, err
		}
		defer gv.Close()
		dec = gv
	}
	load := time.Since(t0).Seconds()
	z := randomTensor(3, 1, 4, b.h, b.h) // [1, 4, h, w]
	ms, timer, err := b.time(func() error { _, err := dec.Decode(z); return err })
	return b.result("vae decode", fmt.Sprintf("latent [1,4,%d,%d]", b.h, b.h), ms, load, timer), err
}

func benchCLIP(b *bench) (benchResult, error) {
	t0 := time.Now()
	c, err := models.LoadCLIPText(models.NewWeights(b.src).Sub("cond_stage_model.transformer.text_model."), models.CLIPTextOptions{})
	if err != nil {
		return benchResult{}, err
	}
	var enc host.TextEncoder = c
	if b.dev.OnGPU() {
		gc, err := models.NewCLIPCUDA(b.dev.GPU, c)
		if err != nil {
			return benchResult{}, err
		}
		defer gc.Close()
		enc = gc
	}
	load := time.Since(t0).Seconds()
	ids := make([][]int, 2) // [2, 77]
	for i := range ids {
		ids[i] = make([]int, 77)
		for j := range ids[i] {
			ids[i][j] = (j*7919 + i*31) % b.layout.CLIPVocab
		}
	}
	ms, timer, err := b.time(func() error { _, err := enc.EncodeSkip(ids, 1); return err })
	return b.result("clip encode (batch 2)", "ids [2,77]", ms, load, timer), err
}

// freeAfter frees a device result once it is computed (the timing only
// needs the work queued).
func freeAfter(t *nn.GPUTensor, err error) error {
	if err != nil {
		return err
	}
	return t.Free()
}

func splitList(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}
