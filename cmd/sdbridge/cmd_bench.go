// cmd_bench.go: 'sdbridge bench' times the model parts at real SD1.5 shapes
// with random weights (no checkpoint needed), so users can size their
// hardware: U-Net CFG step (batch 2), VAE decode, CLIP encode, and on
// request the plugin parts (--parts controlnet,ella). Each part is
// loaded, run once to warm up, then timed over --repeat runs (the median is
// reported). It does not check numerics (the golden tests do).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"time"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

type benchResult struct {
	Part    string  `json:"part"`
	Shape   string  `json:"shape"`
	Millis  float64 `json:"ms"`
	LoadSec float64 `json:"load_s"`
}

type benchReport struct {
	Device  string        `json:"device"`
	Size    int           `json:"size"`
	Threads int           `json:"threads"`
	BLAS    string        `json:"blas"`
	Results []benchResult `json:"results"`
}

func runBench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	device := fs.String("device", "cpu", "cpu (cuda arrives with the CUDA backend)")
	size := fs.Int("size", 512, "image size in pixels (multiple of 8)")
	repeat := fs.Int("repeat", 1, "timed runs per part (after one warm-up run)")
	asJSON := fs.Bool("json", false, "print JSON")
	parts := fs.String("parts", "clip,vae,unet", "comma-separated parts to time: unet, vae, clip, controlnet, ella, t5")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *device != "cpu" {
		return fmt.Errorf("--device %s: only the cpu device is available in this build", *device)
	}
	if *size <= 0 || *size%8 != 0 {
		return fmt.Errorf("--size %d: must be a positive multiple of 8", *size)
	}
	rep := benchReport{Device: "cpu", Size: *size, Threads: runtime.GOMAXPROCS(0), BLAS: nn.GemmBackend()}
	layout := models.SD15()
	src := models.NewRandomSource(layout.Specs(safetensors.F16), 1)
	h := *size / 8
	for _, part := range splitList(*parts) {
		var res benchResult
		var err error
		switch part {
		case "unet":
			res, err = benchUNet(src, h, *repeat)
		case "vae":
			res, err = benchVAE(src, h, *repeat)
		case "clip":
			res, err = benchCLIP(src, *repeat)
		case "controlnet":
			res, err = benchControlNet(layout, h, *repeat)
		case "ella":
			res, err = benchELLA(*repeat)
		case "t5":
			res, err = benchT5(*repeat)
		default:
			return fmt.Errorf("--parts: unknown part %q (unet, vae, clip, controlnet, ella, t5)", part)
		}
		if err != nil {
			return fmt.Errorf("bench %s: %w", part, err)
		}
		rep.Results = append(rep.Results, res)
		if !*asJSON {
			fmt.Printf("%-28s %-26s %10.1f ms   (load %.1f s)\n", res.Part, res.Shape, res.Millis, res.LoadSec)
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

func benchUNet(src models.Source, h, repeat int) (benchResult, error) {
	t0 := time.Now()
	u, err := models.LoadUNet(models.NewWeights(src).Sub("model.diffusion_model."))
	if err != nil {
		return benchResult{}, err
	}
	load := time.Since(t0).Seconds()
	x := randomTensor(1, 2, 4, h, h)   // [2, 4, h, w]: uncond + cond
	ctx := randomTensor(2, 2, 77, 768) // [2, 77, 768]
	ts := []float32{500, 500}          // [2]
	ms, err := timeIt(repeat, func() error { _, err := u.Forward(x, ts, ctx, nil); return err })
	return benchResult{"unet cfg step (batch 2)", fmt.Sprintf("x [2,4,%d,%d]", h, h), ms, load}, err
}

func benchVAE(src models.Source, h, repeat int) (benchResult, error) {
	t0 := time.Now()
	v, err := models.LoadVAEDecoder(models.NewWeights(src).Sub("first_stage_model."), 0)
	if err != nil {
		return benchResult{}, err
	}
	load := time.Since(t0).Seconds()
	z := randomTensor(3, 1, 4, h, h) // [1, 4, h, w]
	ms, err := timeIt(repeat, func() error { _, err := v.Decode(z); return err })
	return benchResult{"vae decode", fmt.Sprintf("latent [1,4,%d,%d]", h, h), ms, load}, err
}

func benchCLIP(src models.Source, repeat int) (benchResult, error) {
	t0 := time.Now()
	c, err := models.LoadCLIPText(models.NewWeights(src).Sub("cond_stage_model.transformer.text_model."), models.CLIPTextOptions{})
	if err != nil {
		return benchResult{}, err
	}
	load := time.Since(t0).Seconds()
	ids := make([][]int, 2) // [2, 77]
	for b := range ids {
		ids[b] = make([]int, 77)
		for i := range ids[b] {
			ids[b][i] = (i*7919 + b*31) % 49408
		}
	}
	ms, err := timeIt(repeat, func() error { _, err := c.Encode(ids); return err })
	return benchResult{"clip encode (batch 2)", "ids [2,77]", ms, load}, err
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
