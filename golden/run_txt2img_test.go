// run_txt2img_test.go runs "txt2img" cases through the real host pipeline:
// the case checkpoint loaded by host.LoadPipeline, the prompt encoded as the
// reference does (ids truncated to 77 and padded with the end token, no
// A1111 syntax), the case's in.noise as the initial noise and in.step_noise.i
// as the noise of step i, compared on out.sigmas, out.latent (before the VAE)
// and out.image. Cases that need LoRA, ControlNet or ELLA plugins are
// unsupported until those plugins are wired into the pipeline.
package golden

import (
	"context"
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

// runTxt2Img runs a "txt2img" case.
func runTxt2Img(c *Case) (Result, error) {
	for _, role := range []string{"lora", "controlnet", "ella"} {
		if _, ok := c.FilesRel[role]; ok {
			return nil, ErrUnsupported // plugin cases: wired when the plugins land
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
		CLIPVocab: paths["clip_vocab"], CLIPMerges: paths["clip_merges"],
		PromptMode: host.PromptTruncate,
	})
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
	res, err := p.Generate(context.Background(), host.Request{
		Prompt: pc.Prompt, Negative: pc.Negative,
		Steps: pc.Steps, CFG: pc.CFG, Sampler: pc.Sampler, Schedule: pc.Schedule,
		Width: pc.Width, Height: pc.Height, Batch: noise.Shape[0],
		InitialNoise: noise, StepNoise: &host.ListNoise{List: steps},
	})
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
