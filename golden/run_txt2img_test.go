// run_txt2img_test.go runs "txt2img" cases through the real host pipeline:
// the case checkpoint loaded by host.LoadPipeline, the prompt encoded as the
// reference does (ids truncated to 77 and padded with the end token, no
// A1111 syntax), the case's in.noise as the initial noise and in.step_noise.i
// as the noise of step i, compared on out.sigmas, out.latent (before the VAE)
// and out.image. A case's plugin files add their hooks, each plugin in its
// own process (plugins_test.go): "lora" patches the U-Net and text encoder
// in shared arenas through the LoRA plugin (txt2imgLoRA), "controlnet" adds
// residuals (txt2imgControlNet), "ella" replaces CLIP's context
// (txt2imgELLA); any combination runs in one generation. On a GPU the
// pipeline is loaded onto the device (host.LoadOptions.Device), the LoRA
// plugin patches the U-Net's device weights in place and the text
// encoder's host copy, re-uploaded (Loaded.UseLoRAs); the ControlNet and
// ELLA plugins are given the pipeline's GPU and write their outputs into
// its device memory.
package golden

import (
	"context"
	"errors"
	"fmt"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/nn"
)

// txt2imgConfig is config "pipeline" of a txt2img case.
type txt2imgConfig struct {
	Prompt   string  `json:"prompt"`
	Negative string  `json:"negative"`
	Steps    int     `json:"steps"`
	CFG      float64 `json:"cfg"`
	Sampler  string  `json:"sampler"`
	Schedule string  `json:"schedule"`
	Width    int     `json:"width"`
	Height   int     `json:"height"`
}

// txt2imgHook installs one plugin's part on a generation on p (a patch of
// the weights, a request hook); the cleanup runs after Generate.
type txt2imgHook func(c *Case, p *host.Loaded, req *host.Request) (cleanup func(), err error)

// txt2imgHooks are the plugin parts, by the case file that asks for them,
// in the order they are installed.
var txt2imgHooks = []struct {
	role string
	hook txt2imgHook
}{
	{"lora", txt2imgLoRA},
	{"controlnet", txt2imgControlNet},
	{"ella", txt2imgELLA},
}

// runTxt2Img runs a "txt2img" case on the CPU.
func runTxt2Img(c *Case) (Result, error) {
	res, _, err := txt2imgCase(c, nil)
	return res, err
}

// runTxt2ImgGPU runs a "txt2img" case with the pipeline on d's GPU.
func runTxt2ImgGPU(c *Case, d *host.Device) (Result, []string, error) {
	return txt2imgCase(c, d)
}

// txt2imgCase runs a "txt2img" case with the plugins its files name, the
// pipeline on d (nil: the CPU); notes name what ran on the CPU although d
// is a GPU.
func txt2imgCase(c *Case, d *host.Device) (Result, []string, error) {
	var pc txt2imgConfig
	if err := c.ConfigInto("pipeline", &pc); err != nil {
		return nil, nil, err
	}
	paths := map[string]string{}
	for _, role := range []string{"checkpoint", "clip_vocab", "clip_merges"} {
		p, err := c.File(role)
		if err != nil {
			return nil, nil, err
		}
		paths[role] = p
	}
	_, withLoRA := c.FilesRel["lora"]
	p, err := host.LoadPipeline(paths["checkpoint"], host.LoadOptions{
		CLIPVocab: paths["clip_vocab"], CLIPMerges: paths["clip_merges"],
		PromptMode: host.PromptTruncate, Patchable: withLoRA, Device: d,
	})
	if err != nil {
		return nil, nil, err
	}
	defer p.Close()
	var notes []string
	if dev, host := p.LoRATargets(); withLoRA && d.OnGPU() {
		notes = append(notes, fmt.Sprintf("lora: %d weights patched on the device, %d on the host then re-uploaded", dev, host))
	}

	noise, err := caseTensor(c, "in.noise")
	if err != nil {
		return nil, nil, err
	}
	var steps []*nn.Tensor
	for i := 0; c.HasInput(fmt.Sprintf("in.step_noise.%d", i)); i++ {
		t, err := caseTensor(c, fmt.Sprintf("in.step_noise.%d", i))
		if err != nil {
			return nil, nil, err
		}
		steps = append(steps, t)
	}
	req := host.Request{
		Prompt: pc.Prompt, Negative: pc.Negative,
		Steps: pc.Steps, CFG: pc.CFG, Sampler: pc.Sampler, Schedule: pc.Schedule,
		Width: pc.Width, Height: pc.Height, Batch: noise.Shape[0],
		InitialNoise: noise, StepNoise: &host.ListNoise{List: steps},
	}
	for _, h := range txt2imgHooks {
		if _, ok := c.FilesRel[h.role]; !ok {
			continue
		}
		cleanup, err := h.hook(c, p, &req)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", h.role, err)
		}
		defer cleanup()
	}
	res, err := p.Generate(context.Background(), req)
	if err != nil {
		return nil, nil, err
	}
	if cond, ok := req.Conditioner.(*host.ELLAConditioner); ok && cond.Stats().Calls == 0 {
		return nil, nil, errors.New("the ELLA conditioner was never called")
	}
	sigmas := make([]float32, len(res.Sigmas))
	for i, s := range res.Sigmas {
		sigmas[i] = float32(s)
	}
	return Result{
		"out.sigmas": {Shape: []int{len(sigmas)}, Data: sigmas},
		"out.latent": {Shape: res.Latent.Shape, Data: res.Latent.Data},
		"out.image":  {Shape: res.Image.Shape, Data: res.Image.Data},
	}, notes, nil
}

// txt2imgLoRA applies the case's LoRA at in.strength_unet and
// in.strength_te (0 when absent: under ELLA the text encoder is unused)
// through the LoRA plugin process, in place in the pipeline's arenas.
func txt2imgLoRA(c *Case, p *host.Loaded, _ *host.Request) (cleanup func(), err error) {
	path, err := c.File("lora")
	if err != nil {
		return nil, err
	}
	unet, err := caseScalar(c, "in.strength_unet", 1)
	if err != nil {
		return nil, err
	}
	te, err := caseScalar(c, "in.strength_te", 0)
	if err != nil {
		return nil, err
	}
	sup, err := goldenPlugins()
	if err != nil {
		return nil, err
	}
	if err := p.UseLoRAs(context.Background(), sup, []host.LoRASpec{{Path: path, UNet: unet, TE: te}}); err != nil {
		return nil, err
	}
	return func() {}, nil
}
