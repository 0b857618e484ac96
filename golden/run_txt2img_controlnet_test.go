// run_txt2img_controlnet_test.go: the ControlNet part of "txt2img" cases
// whose files include "controlnet": the case's ControlNet file, in.hint and
// in.controlnet_strength become a host.ControlNetSource served by the real
// controlnet plugin process (this test binary re-executed as the plugin), on
// both CFG halves for every step, with the same x, t and context as the
// U-Net. txt2imgControlNet is what the txt2img runner calls for such cases;
// TestTxt2ImgControlNet runs the case end to end until it does.
package golden

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/controlnet"
)

const controlNetPluginEnv = "SDBRIDGE_GOLDEN_CONTROLNET_PLUGIN"

// TestControlNetPluginProcess is not a test: re-executed with
// controlNetPluginEnv set, the test binary serves the controlnet plugin.
func TestControlNetPluginProcess(t *testing.T) {
	if os.Getenv(controlNetPluginEnv) != "1" {
		t.Skip("helper process serving the controlnet plugin to the golden runs")
	}
	controlnet.Serve()
	os.Exit(0)
}

// The plugin process is shared by every case of a test run.
var (
	cnOnce   sync.Once
	cnPlugin *host.Plugin
	cnErr    error
)

func controlNetPlugin() (*host.Plugin, error) {
	cnOnce.Do(func() {
		exe, err := os.Executable()
		if err != nil {
			cnErr = err
			return
		}
		sup, err := host.NewSupervisor(host.Options{LogOutput: io.Discard, CallTimeout: 5 * time.Minute})
		if err != nil {
			cnErr = err
			return
		}
		cnPlugin, cnErr = sup.Register(host.Spec{Name: "controlnet", Path: exe,
			Args: []string{"-test.run=^TestControlNetPluginProcess$"}, Env: []string{controlNetPluginEnv + "=1"}, BuiltIn: true})
	})
	return cnPlugin, cnErr
}

// txt2imgControlNet sets req.Residuals to the case's ControlNet (strength
// in.controlnet_strength, every step, both CFG halves) for a generation on
// p. Fill req (steps, schedule, cfg, size, batch) first; call the returned
// cleanup after Generate. With ELLA's Conditioner on req the ControlNet gets
// ELLA's context, as the U-Net does.
func txt2imgControlNet(c *Case, p *host.Loaded, req *host.Request) (cleanup func(), err error) {
	file, err := c.File("controlnet")
	if err != nil {
		return nil, err
	}
	hint, err := caseTensor(c, "in.hint")
	if err != nil {
		return nil, err
	}
	strength := 1.0
	if c.HasInput("in.controlnet_strength") {
		s, _, err := c.Input("in.controlnet_strength")
		if err != nil {
			return nil, err
		}
		strength = float64(s[0])
	}
	unet, ok := p.UNet.(*models.UNet)
	if !ok {
		return nil, fmt.Errorf("txt2img controlnet: pipeline U-Net is %T, want *models.UNet", p.UNet)
	}
	plugin, err := controlNetPlugin()
	if err != nil {
		return nil, fmt.Errorf("controlnet plugin: %w", err)
	}
	src, err := host.NewControlNetSource(context.Background(), plugin, host.ControlNetOptions{
		UNet: unet.Config, Schedule: p.Schedule, ScheduleName: req.Schedule, Steps: req.Steps,
		Batch: max(req.Batch, 1), CFG: req.CFG, Width: req.Width, Height: req.Height,
	}, []host.ControlNetUnit{{Path: file, Hint: hint, Strength: strength, Start: 0, End: 1}})
	if err != nil {
		return nil, err
	}
	req.Residuals = src
	return func() { src.Close() }, nil
}

// runTxt2ImgControlNet runs a txt2img case with a ControlNet (and no other
// plugin) the way runTxt2Img runs a plain one.
func runTxt2ImgControlNet(c *Case) (Result, error) {
	for _, role := range []string{"lora", "ella"} {
		if _, ok := c.FilesRel[role]; ok {
			return nil, ErrUnsupported
		}
	}
	var pc txt2imgConfig
	if err := c.ConfigInto("pipeline", &pc); err != nil {
		return nil, err
	}
	paths := map[string]string{}
	for _, role := range []string{"checkpoint", "clip_vocab", "clip_merges"} {
		p, err := c.File(role)
		if err != nil {
			return nil, err
		}
		paths[role] = p
	}
	p, err := host.LoadPipeline(paths["checkpoint"], host.LoadOptions{
		CLIPVocab: paths["clip_vocab"], CLIPMerges: paths["clip_merges"], PromptMode: host.PromptTruncate})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	noise, err := caseTensor(c, "in.noise")
	if err != nil {
		return nil, err
	}
	var steps []*nn.Tensor
	for i := 0; c.HasInput(fmt.Sprintf("in.step_noise.%d", i)); i++ {
		t, err := caseTensor(c, fmt.Sprintf("in.step_noise.%d", i))
		if err != nil {
			return nil, err
		}
		steps = append(steps, t)
	}
	req := host.Request{
		Prompt: pc.Prompt, Negative: pc.Negative,
		Steps: pc.Steps, CFG: pc.CFG, Sampler: pc.Sampler, Schedule: pc.Schedule,
		Width: pc.Width, Height: pc.Height, Batch: noise.Shape[0],
		InitialNoise: noise, StepNoise: &host.ListNoise{List: steps},
	}
	cleanup, err := txt2imgControlNet(c, p, &req)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	res, err := p.Generate(context.Background(), req)
	if err != nil {
		return nil, err
	}
	sigmas := make([]float32, len(res.Sigmas))
	for i, s := range res.Sigmas {
		sigmas[i] = float32(s)
	}
	return Result{
		"out.sigmas": {Shape: []int{len(sigmas)}, Data: sigmas},
		"out.latent": {Shape: res.Latent.Shape, Data: res.Latent.Data},
		"out.image":  {Shape: res.Image.Shape, Data: res.Image.Data},
	}, nil
}

// TestTxt2ImgControlNet runs txt2img_controlnet through the plugin process.
func TestTxt2ImgControlNet(t *testing.T) {
	c, err := Load(Dir(), "txt2img_controlnet")
	if err != nil {
		t.Skipf("golden case not available: %v", err)
	}
	defer c.Close()
	got, err := runTxt2ImgControlNet(c)
	if err != nil {
		t.Fatal(err)
	}
	rel, err := c.Compare(got)
	fmt.Printf("golden: %s %s rel_l2=%.3g (controlnet plugin process)\n", c.Name, c.Kind, rel)
	if err != nil {
		t.Fatal(err)
	}
}
