// Package controlnet is the sdbridge ControlNet plugin: it loads SD 1.x
// ControlNets (every file form models.ControlNetWeights accepts), checks each
// against the U-Net configuration the host sends, encodes each hint image
// once and caches it, and per step writes the named residuals
// ("input_blocks.0".."input_blocks.11", "middle_block") into buffers the
// host allocated in a shared arena, scaled as the host asks and either
// overwriting or accumulating (several nets summed in place). Outputs in
// device arenas are computed on that GPU (gpu.go).
//
// The package also holds the hint image side that runs in the host process:
// PNG/JPEG loading, resizing to 8x the latent (hint_image.go) and the
// preprocessors that need no network (preprocess.go, canny.go).
//
// It deliberately does not decide which steps or rows a net runs on, nor the
// strength, soft weights or CFG halves: the host adapter (host/controlnet.go)
// does, and sends the resulting scales. It has no T2I-Adapter, Control-LoRA
// or "difference" support (models refuses those files with a clear error).
package controlnet

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// Version of the plugin.
const Version = "0.1.0"

// hintCacheSize is how many encoded hints each net keeps (a generation
// uses one per net; a few more cover alternating jobs).
const hintCacheSize = 4

// Plugin serves ControlNet residuals. The zero value is not usable; call New.
type Plugin struct {
	log hclog.Logger

	mu   sync.Mutex
	nets map[netKey]*loadedNet
	// Device copies (gpu.go), created on the first call with device outputs.
	gpuNets map[gpuKey]*gpuNet
	blas    map[*cuda.Device]*cuda.BLAS
}

type netKey struct {
	path  string
	heads int
}

// loadedNet is one bound ControlNet and its hint encodings.
type loadedNet struct {
	net    *models.ControlNet
	layout models.ControlNetLayout

	mu    sync.Mutex
	hints map[string]*nn.Tensor // hint key -> [1 or B, mc, h, w]
	order []string              // insertion order, oldest first
}

// New returns a plugin with an empty cache; log may be nil.
func New(log hclog.Logger) *Plugin {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Plugin{log: log, nets: map[netKey]*loadedNet{}}
}

// Describe names the plugin and its parameters.
func (p *Plugin) Describe(context.Context, *sdk.DescribeRequest) (*sdk.DescribeResponse, error) {
	return &sdk.DescribeResponse{
		Name:         "controlnet",
		Version:      Version,
		Capabilities: []sdk.Capability{sdk.CapResiduals, sdk.CapDeviceArenas},
		Params: []sdk.ParamSpec{
			{Name: ParamNet, Type: sdk.ParamFile, Help: "ControlNet .safetensors file or diffusers directory"},
			{Name: ParamUNet, Type: sdk.ParamString, Help: "host U-Net configuration (JSON of models.UNetConfig)"},
			{Name: ParamHintKey, Type: sdk.ParamString, Help: "cache key of the hint image (a hash)"},
			{Name: ParamScales, Type: sdk.ParamString, Help: "one multiplier per output, comma-separated"},
			{Name: ParamAccumulate, Type: sdk.ParamBool, Default: "false", Help: "add into the outputs instead of overwriting"},
			{Name: ParamOp, Type: sdk.ParamString, Default: OpResiduals, Help: "residuals | load"},
			{Name: ParamGlobalPool, Type: sdk.ParamBool, Default: "false", Help: "replace each residual by its spatial mean (shuffle nets)"},
		},
	}, nil
}

// net returns the ControlNet for path bound for cfg, loading it on first use,
// and refuses one that does not fit cfg.
func (p *Plugin) net(path string, cfg models.UNetConfig) (*loadedNet, error) {
	if path == "" {
		return nil, fmt.Errorf("controlnet: parameter %q (the ControlNet file) is required", ParamNet)
	}
	key := netKey{path, cfg.NumHeads}
	p.mu.Lock()
	defer p.mu.Unlock()
	ln, ok := p.nets[key]
	if !ok {
		net, layout, err := loadNet(path, cfg.NumHeads)
		if err != nil {
			return nil, err
		}
		if len(net.Unused) > 0 {
			p.log.Warn("unused tensors in ControlNet file", "file", path, "count", len(net.Unused), "first", net.Unused[:min(3, len(net.Unused))])
		}
		p.log.Info("loaded ControlNet", "file", path, "layout", string(layout), "model_channels", net.Config.ModelChannels, "context_dim", net.Config.ContextDim)
		ln = &loadedNet{net: net, layout: layout, hints: map[string]*nn.Tensor{}}
		p.nets[key] = ln
	}
	if err := ln.net.CheckCompatible(cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ln, nil
}

// Residuals computes one step's residuals into req.Outputs.
func (p *Plugin) Residuals(ctx context.Context, req *sdk.ResidualsRequest) (*sdk.ResidualsResponse, error) {
	path := req.Params.String(ParamNet, "")
	ucText, ok := req.Params.Get(ParamUNet)
	if !ok {
		return nil, fmt.Errorf("controlnet: parameter %q (the host U-Net configuration) is required", ParamUNet)
	}
	cfg, err := DecodeUNetConfig(ucText)
	if err != nil {
		return nil, fmt.Errorf("controlnet: %w", err)
	}
	ln, err := p.net(path, cfg)
	if err != nil {
		return nil, err
	}
	switch op := req.Params.String(ParamOp, OpResiduals); op {
	case OpLoad:
		return &sdk.ResidualsResponse{}, nil
	case OpResiduals:
	default:
		return nil, fmt.Errorf("controlnet: parameter %q: unknown op %q (want %s or %s)", ParamOp, op, OpResiduals, OpLoad)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if slices.ContainsFunc(req.Outputs, (*sdk.Tensor).OnDevice) {
		if err := p.residualsGPU(req, netKey{path, cfg.NumHeads}, ln); err != nil {
			return nil, fmt.Errorf("controlnet %s (cuda): %w", path, err)
		}
		return &sdk.ResidualsResponse{Written: sdk.Refs(req.Outputs...)}, nil
	}

	x, ts, cx, err := stepInputs(req)
	if err != nil {
		return nil, fmt.Errorf("controlnet %s: %w", path, err)
	}
	guided, err := ln.encodedHint(req, x.Shape)
	if err != nil {
		return nil, fmt.Errorf("controlnet %s: %w", path, err)
	}
	res, err := ln.net.ForwardEncoded(x, guided, ts, cx)
	if err != nil {
		return nil, fmt.Errorf("controlnet %s: %w", path, err)
	}
	if err := writeOutputs(req, res); err != nil {
		return nil, fmt.Errorf("controlnet %s: %w", path, err)
	}
	return &sdk.ResidualsResponse{Written: sdk.Refs(req.Outputs...)}, nil
}

// stepInputs copies x [B, 4, h, w] (the first 4 channels of a 9-channel
// inpainting input), the timesteps [B] and the context [B, L, D] out of the
// read-only arena into plugin memory.
func stepInputs(req *sdk.ResidualsRequest) (x *nn.Tensor, ts []float32, cx *nn.Tensor, err error) {
	if req.X == nil || req.Context == nil {
		return nil, nil, nil, fmt.Errorf("residuals need x and context tensors")
	}
	xs, err := req.X.Float32()
	if err != nil {
		return nil, nil, nil, err
	}
	if len(req.X.Shape) != 4 || (req.X.Shape[1] != 4 && req.X.Shape[1] != 9) {
		return nil, nil, nil, fmt.Errorf("x has shape %v, want [B, 4, h, w] (or 9 channels for inpainting)", req.X.Shape)
	}
	b, c, h, w := req.X.Shape[0], req.X.Shape[1], req.X.Shape[2], req.X.Shape[3]
	x = nn.New(b, 4, h, w) // [B, 4, h, w]
	plane := 4 * h * w
	for i := range b {
		copy(x.Data[i*plane:(i+1)*plane], xs[i*c*h*w:])
	}
	cs, err := req.Context.Float32()
	if err != nil {
		return nil, nil, nil, err
	}
	if len(req.Context.Shape) != 3 || req.Context.Shape[0] != b {
		return nil, nil, nil, fmt.Errorf("context has shape %v, want [%d, L, D]", req.Context.Shape, b)
	}
	cx = nn.From(slices.Clone(cs), req.Context.Shape...) // [B, L, D]
	if len(req.Timesteps) != b {
		return nil, nil, nil, fmt.Errorf("%d timesteps for a batch of %d", len(req.Timesteps), b)
	}
	return x, slices.Clone(req.Timesteps), cx, nil
}

// encodedHint returns the hint encoding for this request's hint, from the
// cache when its key was seen before at this latent size.
func (ln *loadedNet) encodedHint(req *sdk.ResidualsRequest, xShape []int) (*nn.Tensor, error) {
	hint, key, err := requestHint(req, xShape, ln.net.Hint.HintChannels())
	if err != nil {
		return nil, err
	}
	if key != "" {
		ln.mu.Lock()
		g, ok := ln.hints[key]
		ln.mu.Unlock()
		if ok {
			return g, nil
		}
	}
	data, err := hint.Float32()
	if err != nil {
		return nil, err
	}
	g, err := ln.net.HintEncode(nn.From(slices.Clone(data), hint.Shape...)) // [1 or B, mc, h, w]
	if err != nil {
		return nil, err
	}
	if key != "" {
		ln.mu.Lock()
		if _, ok := ln.hints[key]; !ok {
			ln.hints[key] = g
			ln.order = append(ln.order, key)
			if len(ln.order) > hintCacheSize {
				delete(ln.hints, ln.order[0])
				ln.order = ln.order[1:]
			}
		}
		ln.mu.Unlock()
	}
	return g, nil
}

// requestHint finds the request's hint (the control image, [1|B, C, 8h,
// 8w] for a latent xShape [B, 4, h, w] and C = channels) and its cache
// key (empty when the host sent none).
func requestHint(req *sdk.ResidualsRequest, xShape []int, channels int) (hint *sdk.Tensor, key string, err error) {
	hint = sdk.Find(req.Inputs, HintInput)
	if hint == nil {
		return nil, "", fmt.Errorf("no %q input tensor (the control image)", HintInput)
	}
	b, h, w := xShape[0], xShape[2], xShape[3]
	if len(hint.Shape) != 4 || (hint.Shape[0] != 1 && hint.Shape[0] != b) || hint.Shape[1] != channels {
		return nil, "", fmt.Errorf("hint has shape %v, want [1 or %d, %d, %d, %d]", hint.Shape, b, channels, 8*h, 8*w)
	}
	if hint.Shape[2] != 8*h || hint.Shape[3] != 8*w {
		return nil, "", fmt.Errorf("hint is %dx%d px but the latent is %dx%d: the control image must be exactly 8x the latent (%dx%d px); resize it before sending",
			hint.Shape[3], hint.Shape[2], w, h, 8*w, 8*h)
	}
	if key = req.Params.String(ParamHintKey, ""); key != "" {
		key = fmt.Sprintf("%s@%v", key, hint.Shape)
	}
	return hint, key, nil
}

// writeOutputs stores scale_i * res[name_i] into each granted output, or
// adds it with ParamAccumulate.
func writeOutputs(req *sdk.ResidualsRequest, res models.Residuals) error {
	if len(req.Outputs) == 0 {
		return fmt.Errorf("no output tensors granted")
	}
	scales, acc, pool, err := outputOptions(req)
	if err != nil {
		return err
	}
	for i, o := range req.Outputs {
		r, ok := res[o.Name]
		if !ok {
			return fmt.Errorf("output %q: the ControlNet has no such residual (want input_blocks.0..%d or middle_block)", o.Name, len(res)-2)
		}
		if o.DType != sdk.F32 || !slices.Equal(o.Shape, r.Shape) {
			return fmt.Errorf("output %q is %s %v, the residual is F32 %v", o.Name, o.DType, o.Shape, r.Shape)
		}
		dst, err := o.MutableFloat32() // [B, C_i, H_i, W_i]
		if err != nil {
			return err
		}
		if pool {
			r = spatialMean(r)
		}
		s := scales[i]
		switch {
		case acc:
			for j, v := range r.Data {
				dst[j] += s * v
			}
		case s == 1:
			copy(dst, r.Data)
		default:
			for j, v := range r.Data {
				dst[j] = s * v
			}
		}
	}
	return nil
}

// spatialMean returns r [B, C, H, W] with every H x W plane replaced by its
// mean (torch.mean(x, dim=(2, 3), keepdim=True), broadcast back).
func spatialMean(r *nn.Tensor) *nn.Tensor {
	out := nn.New(r.Shape...) // [B, C, H, W]
	hw := r.Shape[2] * r.Shape[3]
	for p := 0; p+hw <= len(r.Data); p += hw {
		var sum float64
		for _, v := range r.Data[p : p+hw] {
			sum += float64(v)
		}
		m := float32(sum / float64(hw))
		for j := range hw {
			out.Data[p+j] = m
		}
	}
	return out
}
