// pipeline.go is txt2img: prompt and negative prompt -> contexts (once per
// generation; a ScheduleConditioner prepares every step's context at
// once) -> sigma schedule -> initial latent (noise * sigmas[0]) ->
// sampler loop over the CFG denoiser (plugin hooks per step, progress
// callback) -> VAE decode -> image in [-1, 1]. It validates a request before
// any model work. It does not load files (LoadPipeline in pipeline_load.go
// does), write images (png.go), or start plugins (the supervisor does; it
// hands the pipeline a Conditioner or ResidualSource).
package host

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sdbridge/sdbridge/nn"
)

// ImageDecoder maps sampler-space latents [B, 4, h, w] to images
// [B, 3, 8h, 8w] in about [-1, 1]. *models.VAE implements it.
type ImageDecoder interface {
	Decode(latent *nn.Tensor) (*nn.Tensor, error)
}

// Pipeline holds the loaded models of one checkpoint.
type Pipeline struct {
	UNet     EpsModel
	VAE      ImageDecoder
	Prompts  PromptEncoder // nil when a Conditioner provides every context
	Schedule *DiscreteSchedule
	// LatentChannels and Downscale describe the latent space (4 and 8 for
	// SD1.x). The U-Net takes latents of any size (odd sides as in ldm).
	LatentChannels, Downscale int
}

// Request is one txt2img generation.
type Request struct {
	Prompt, Negative string
	Steps            int
	CFG              float64
	Sampler          string // SamplerNames
	Schedule         string // ScheduleNames
	Width, Height    int    // pixels, multiples of Downscale
	Batch            int    // images per generation (0 means 1)
	Seed             uint64
	NoiseKind        string // NoiseKinds ("comfy" by default)

	// InitialNoise and StepNoise replace the seeded noise (tests, golden
	// cases): InitialNoise is [Batch, C, h, w] standard normal.
	InitialNoise *nn.Tensor
	StepNoise    NoiseSource

	// Optional plugin hooks.
	Conditioner Conditioner
	Residuals   ResidualSource

	// Progress is called after every sampler step.
	Progress func(Progress)
	// SkipDecode stops after sampling (Result.Image stays nil).
	SkipDecode bool
}

// Progress reports one finished step.
type Progress struct {
	Step, Steps int           // 1-based step just finished, total
	Elapsed     time.Duration // since sampling began
}

// Result is what a generation produced.
type Result struct {
	Sigmas []float64  // [Steps+1]
	Latent *nn.Tensor // [B, C, h, w] before the VAE
	Image  *nn.Tensor // [B, 3, H, W] in about [-1, 1] (not clamped)
}

// Validate checks a request without running anything; every message names
// the offending field.
func (p *Pipeline) Validate(req *Request) error {
	var errs []string
	down := max(p.Downscale, 1)
	if req.Width <= 0 || req.Height <= 0 || req.Width%down != 0 || req.Height%down != 0 {
		errs = append(errs, fmt.Sprintf("size %dx%d: width and height must be positive multiples of %d", req.Width, req.Height, down))
	}
	if req.Steps < 1 {
		errs = append(errs, fmt.Sprintf("steps %d: must be at least 1", req.Steps))
	}
	if req.CFG < 0 {
		errs = append(errs, fmt.Sprintf("cfg %v: must not be negative", req.CFG))
	}
	if req.Batch < 0 {
		errs = append(errs, fmt.Sprintf("batch %d: must be at least 1", req.Batch))
	}
	if _, err := LookupSampler(req.Sampler); err != nil {
		errs = append(errs, err.Error())
	}
	if !slices.Contains(ScheduleNames, req.Schedule) {
		errs = append(errs, fmt.Sprintf("unknown schedule %q (valid: %s)", req.Schedule, strings.Join(ScheduleNames, ", ")))
	}
	if req.InitialNoise == nil && req.NoiseKind != "" && !slices.Contains(NoiseKinds, req.NoiseKind) {
		errs = append(errs, fmt.Sprintf("unknown noise kind %q (valid: %s)", req.NoiseKind, strings.Join(NoiseKinds, ", ")))
	}
	if req.Conditioner == nil && p.Prompts == nil {
		errs = append(errs, "no text encoder and no conditioning plugin")
	}
	if len(errs) > 0 {
		return fmt.Errorf("bad request: %s", strings.Join(errs, "; "))
	}
	return nil
}

// LatentShape is the latent shape of a request: [B, C, H/8, W/8].
func (p *Pipeline) LatentShape(req *Request) []int {
	down := max(p.Downscale, 1)
	return []int{max(req.Batch, 1), p.LatentChannels, req.Height / down, req.Width / down}
}

// Generate runs one txt2img request.
func (p *Pipeline) Generate(ctx context.Context, req Request) (*Result, error) {
	if err := p.Validate(&req); err != nil {
		return nil, err
	}
	sampler, _ := LookupSampler(req.Sampler)
	sigmas, err := p.Schedule.SamplingSigmas(req.Schedule, req.Steps)
	if err != nil {
		return nil, err
	}
	shape := p.LatentShape(&req)

	// Contexts, once per generation (a Conditioner supplies them per step).
	den := &CFGDenoiser{Model: p.UNet, Schedule: p.Schedule, Scale: req.CFG,
		Conditioner: req.Conditioner, Residuals: req.Residuals, Ctx: ctx}
	if sc, ok := req.Conditioner.(ScheduleConditioner); ok {
		// The whole schedule's contexts in one batched call per half;
		// other timesteps still go through Context.
		if err := sc.PrepareSchedule(ctx, den.ScheduleTimesteps(sigmas), req.CFG != 1); err != nil {
			return nil, fmt.Errorf("conditioning schedule: %w", err)
		}
	}
	if req.Conditioner == nil {
		if den.Cond, err = p.Prompts.EncodePrompt(ctx, req.Prompt); err != nil {
			return nil, fmt.Errorf("prompt: %w", err)
		}
		if req.CFG != 1 {
			if den.Uncond, err = p.Prompts.EncodePrompt(ctx, req.Negative); err != nil {
				return nil, fmt.Errorf("negative prompt: %w", err)
			}
		}
	}

	// Noise: x = noise * sigmas[0].
	noise, steps := req.InitialNoise, req.StepNoise
	if noise == nil {
		seeded, err := NewSeedNoise(req.NoiseKind, req.Seed)
		if err != nil {
			return nil, err
		}
		if noise, err = seeded.Initial(shape); err != nil {
			return nil, err
		}
		if steps == nil {
			steps = seeded.Steps()
		}
	}
	if noise.Numel() != shapeNumel(shape) {
		return nil, fmt.Errorf("initial noise %v, want %v", noise.Shape, shape)
	}
	x := nn.From(append([]float32(nil), noise.Data...), shape...) // [B, C, h, w]
	nn.Scale(x, float32(sigmas[0]))

	start := time.Now()
	opt := SampleOptions{Noise: steps}
	if req.Progress != nil {
		opt.Callback = func(s StepInfo) {
			req.Progress(Progress{Step: s.Step + 1, Steps: s.Steps, Elapsed: time.Since(start)})
		}
	}
	latent, err := sampler(den.Denoise, x, sigmas, opt) // [B, C, h, w]
	if err != nil {
		return nil, fmt.Errorf("sampling: %w", err)
	}
	res := &Result{Sigmas: sigmas, Latent: latent}
	if req.SkipDecode {
		return res, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if res.Image, err = p.VAE.Decode(latent); err != nil { // [B, 3, H, W]
		return nil, fmt.Errorf("vae decode: %w", err)
	}
	return res, nil
}

func shapeNumel(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}
