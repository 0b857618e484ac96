// pipeline_test.go runs the pipeline on fake models: the initial latent is
// noise * sigmas[0], the prompts reach the U-Net, progress is reported per
// step, seeded noise is ComfyUI's, and bad requests are refused before any
// model runs. The real models are exercised by the golden txt2img cases.
package host

import (
	"context"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
)

// zeroEps predicts no noise, so every sampler leaves x unchanged.
type zeroEps struct{ contexts []float32 }

func (z *zeroEps) Forward(x *nn.Tensor, _ []float32, ctx *nn.Tensor, _ models.Residuals) (*nn.Tensor, error) {
	z.contexts = append(z.contexts, ctx.Data[0])
	return nn.New(x.Shape...), nil
}

type prompts map[string]float32

func (p prompts) EncodePrompt(_ context.Context, text string) (*nn.Tensor, error) {
	return ctxOf(p[text], 77), nil
}

type halfDecoder struct{}

func (halfDecoder) Decode(l *nn.Tensor) (*nn.Tensor, error) {
	return nn.New(l.Shape[0], 3, l.Shape[2]*8, l.Shape[3]*8), nil
}

func testPipeline(t *testing.T, unet EpsModel) *Pipeline {
	return &Pipeline{UNet: unet, VAE: halfDecoder{}, Prompts: prompts{"cat": 1, "dog": 2}, Schedule: sd15(t),
		LatentChannels: 4, Downscale: 8}
}

func TestPipelineGenerate(t *testing.T) {
	unet := &zeroEps{}
	p := testPipeline(t, unet)
	var steps []int
	res, err := p.Generate(context.Background(), Request{Prompt: "cat", Negative: "dog", Steps: 3, CFG: 5,
		Sampler: "euler", Schedule: "karras", Width: 64, Height: 128, Seed: 42, Batch: 2,
		Progress: func(pr Progress) { steps = append(steps, pr.Step) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != 3 || steps[2] != 3 {
		t.Errorf("progress steps %v", steps)
	}
	if got := res.Latent.Shape; got[0] != 2 || got[1] != 4 || got[2] != 16 || got[3] != 8 {
		t.Errorf("latent shape %v", got)
	}
	// ComfyUI's noise for seed 42 starts 1.9269153; the latent keeps noise * sigma_max.
	if want := float32(1.9269152879714966) * float32(res.Sigmas[0]); res.Latent.Data[0] != want {
		t.Errorf("latent[0] = %v, want %v", res.Latent.Data[0], want)
	}
	if unet.contexts[0] != 2 || len(unet.contexts) != 3 {
		t.Errorf("U-Net contexts %v: want 3 calls, uncond (dog = 2) first", unet.contexts)
	}
	if res.Image == nil || res.Image.Shape[2] != 128 {
		t.Errorf("image %v", res.Image)
	}
}

func TestPipelineValidate(t *testing.T) {
	p := testPipeline(t, &zeroEps{})
	ok := Request{Prompt: "cat", Steps: 2, CFG: 7, Sampler: "euler", Schedule: "normal", Width: 64, Height: 64}
	for _, tc := range []struct {
		name   string
		change func(r *Request)
		want   string
	}{
		{"size", func(r *Request) { r.Width = 60 }, "multiples of 8"},
		{"sampler", func(r *Request) { r.Sampler = "x" }, "valid: euler"},
		{"schedule", func(r *Request) { r.Schedule = "x" }, "valid: normal"},
		{"steps", func(r *Request) { r.Steps = 0 }, "steps 0"},
		{"noise", func(r *Request) { r.NoiseKind = "gpu" }, "noise kind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ok
			tc.change(&r)
			_, err := p.Generate(context.Background(), r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	if err := p.Validate(&ok); err != nil {
		t.Errorf("valid request refused: %v", err)
	}
}
