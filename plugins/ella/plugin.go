// Package ella is the sdbridge ELLA plugin (a Conditioner): it loads the
// FLAN-T5 encoder, its SentencePiece tokenizer and the ELLA connector (TSC),
// encodes each prompt once (EncodePrompt: tokens, T5, the connector's text
// projection; cached by prompt in a small LRU) and writes the connector's
// output for the U-Net's timesteps into the buffer the host allocated in a
// shared arena (Conditioning: [len(Timesteps), 64, W], replacing CLIP's
// [B, 77, W]) in one batched run: the host asks for a whole schedule at
// once before sampling (host/ella_schedule.go), and for one timestep at a
// step outside it.
//
// Length modes (spec §5.4, §6): "flexible" (default, the authors'
// recommendation) feeds the prompt's pieces + EOS unpadded; "fixed" feeds
// 128 positions (127 pieces + EOS, right-padded with id 0, T5 attention mask
// on the real tokens) and the connector attends to all 128 rows.
//
// It deliberately does not do "ELLA + CLIP" concatenation, CFG, or timestep
// rounding: the host adapter (host/ella.go) owns those, since the CLIP
// context lives in the host. Prompt-weight syntax is not interpreted: T5
// sees the text as given.
package ella

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// Version of the plugin.
const Version = "0.1.0"

// Parameters of EncodePrompt (Conditioning only needs the handle).
const (
	ParamELLA        = "ella"         // connector file
	ParamT5          = "t5"           // T5 encoder folder
	ParamT5Tokenizer = "t5_tokenizer" // spiece.model, tokenizer.json or folder
	ParamHeads       = "heads"        // connector heads (8)
	ParamT5FP16      = "t5_fp16"      // emulate fp16 T5
	ParamContextDim  = "context_dim"  // the U-Net's cross-attention width
	ParamMode        = "mode"         // ModeFlexible or ModeFixed
	ParamDevice      = "device"       // "cpu" (default) or "cuda:N": where T5 runs (gpu.go)
)

// Length modes.
const (
	ModeFlexible = "flexible"
	ModeFixed    = "fixed"
)

// FixedLength is the token count of fixed mode (ELLA's training length).
const FixedLength = 128

// Plugin serves ELLA conditioning. The zero value is not usable; call New.
type Plugin struct {
	log hclog.Logger
	// load loads a configuration (Load; tests may replace it).
	load func(Config) (*Models, error)

	mu      sync.Mutex
	models  *Models // the configuration in use (one at a time: T5-XL is large)
	cache   *lru
	handles map[string]*handle
	next    uint64
	// Device copies of the connector (gpu.go), made on the first call
	// with a device output.
	gpus map[gpuKey]*gpuConnector
	t5s  map[t5Key]*models.T5CUDA
	blas map[*cuda.Device]*cuda.BLAS
}

// handle is one prepared prompt.
type handle struct {
	m   *Models
	enc *encoded
}

// New returns a plugin with an empty cache; log may be nil.
func New(log hclog.Logger) *Plugin {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Plugin{log: log, load: Load, cache: newLRU(DefaultCacheSize), handles: map[string]*handle{}}
}

// Describe names the plugin and its parameters.
func (p *Plugin) Describe(context.Context, *sdk.DescribeRequest) (*sdk.DescribeResponse, error) {
	return &sdk.DescribeResponse{
		Name:         "ella",
		Version:      Version,
		Capabilities: []sdk.Capability{sdk.CapConditioning, sdk.CapDeviceArenas},
		Params: []sdk.ParamSpec{
			{Name: ParamELLA, Type: sdk.ParamFile, Help: "ELLA connector file (ella-sd1.5-tsc-t5xl.safetensors)"},
			{Name: ParamT5, Type: sdk.ParamFile, Help: "FLAN-T5-XL encoder folder (config.json, model.safetensors)"},
			{Name: ParamT5Tokenizer, Type: sdk.ParamFile, Help: "spiece.model, tokenizer.json or a folder holding one (default: the T5 folder)"},
			{Name: ParamHeads, Type: sdk.ParamInt, Default: "8", Help: "connector attention heads (not stored in the file)"},
			{Name: ParamT5FP16, Type: sdk.ParamBool, Default: "false", Help: "round T5 as an all-fp16 PyTorch model does"},
			{Name: ParamContextDim, Type: sdk.ParamInt, Help: "the U-Net's cross-attention context dim (768 for SD 1.5)"},
			{Name: ParamMode, Type: sdk.ParamString, Default: ModeFlexible, Help: "flexible (no padding) or fixed (128 tokens with mask)"},
			{Name: ParamDevice, Type: sdk.ParamString, Default: "cpu", Help: "where T5 encodes prompts: cpu or cuda:N (the host's GPU)"},
		},
	}, nil
}

// configOf reads the model configuration of a call.
func configOf(ps sdk.Params) (Config, error) {
	cfg := Config{
		ELLAPath:    ps.String(ParamELLA, ""),
		T5Dir:       ps.String(ParamT5, ""),
		T5Tokenizer: ps.String(ParamT5Tokenizer, ""),
	}
	if v, ok := ps.Get(ParamHeads); ok {
		h, err := strconv.Atoi(v)
		if err != nil || h < 1 {
			return cfg, fmt.Errorf("%w: parameter %q = %q: want a positive integer", ErrConfig, ParamHeads, v)
		}
		cfg.Heads = h
	}
	if v, ok := ps.Get(ParamT5FP16); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return cfg, fmt.Errorf("%w: parameter %q = %q: want true or false", ErrConfig, ParamT5FP16, v)
		}
		cfg.T5FP16 = b
	}
	return cfg, nil
}

// modelsFor returns the loaded models of cfg, loading them (and dropping
// the previous configuration) on first use.
func (p *Plugin) modelsFor(cfg Config) (*Models, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.models != nil && p.models.Config == cfg {
		return p.models, nil
	}
	t0 := time.Now()
	m, err := p.load(cfg)
	if err != nil {
		return nil, err
	}
	p.log.Info("loaded ELLA", "ella", cfg.ELLAPath, "t5", cfg.T5Dir, "width", m.ELLA.Width,
		"t5_d_model", m.T5.DModel(), "t5_layers", m.T5.Config.NumLayers, "seconds", time.Since(t0).Seconds())
	p.models = m
	p.dropGPU(m)
	return m, nil
}

// EncodePrompt loads the configuration if needed, checks it against the
// host's U-Net, and encodes the prompt once (or finds it in the cache).
func (p *Plugin) EncodePrompt(ctx context.Context, req *sdk.EncodePromptRequest) (*sdk.EncodePromptResponse, error) {
	cfg, err := configOf(req.Params)
	if err != nil {
		return nil, err
	}
	cdText, ok := req.Params.Get(ParamContextDim)
	if !ok {
		return nil, fmt.Errorf("%w: parameter %q (the U-Net's context dim) is required", ErrConfig, ParamContextDim)
	}
	contextDim, err := strconv.Atoi(cdText)
	if err != nil || contextDim < 1 {
		return nil, fmt.Errorf("%w: parameter %q = %q: want a positive integer", ErrConfig, ParamContextDim, cdText)
	}
	mode := req.Params.String(ParamMode, ModeFlexible)
	if mode != ModeFlexible && mode != ModeFixed {
		return nil, fmt.Errorf("%w: parameter %q: unknown mode %q (want %s or %s; ELLA + CLIP concatenation is done by the host)", ErrConfig, ParamMode, mode, ModeFlexible, ModeFixed)
	}
	m, err := p.modelsFor(cfg)
	if err != nil {
		return nil, err
	}
	if err := m.CheckContextDim(contextDim); err != nil {
		return nil, err
	}
	t5, err := p.t5For(m, req.Params.String(ParamDevice, "cpu"))
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	key := promptKey{config: cfg, mode: mode, text: req.Text}
	enc, ok := p.cache.get(key)
	if !ok {
		t0 := time.Now()
		if enc, err = encode(m, t5, mode, req.Text); err != nil {
			return nil, err
		}
		p.cache.put(key, enc)
		p.log.Debug("encoded prompt", "tokens", enc.tokens, "mode", mode, "seconds", time.Since(t0).Seconds())
	}
	p.mu.Lock()
	p.next++
	h := "p" + strconv.FormatUint(p.next, 10)
	p.handles[h] = &handle{m: m, enc: enc}
	p.mu.Unlock()
	return &sdk.EncodePromptResponse{Handle: h, ContextShape: []int{1, m.ELLA.NumLatents, m.ELLA.Width}}, nil
}

// t5Encoder is the T5 forward encode needs: the CPU encoder or its GPU
// twin (models.T5CUDA).
type t5Encoder interface {
	Encode(ids [][]int, mask [][]bool) (*nn.Tensor, error)
}

// encode tokenizes text, runs T5 (t5: m.T5 or its GPU copy) and prepares
// the connector's text part.
func encode(m *Models, t5 t5Encoder, mode, text string) (*encoded, error) {
	var ids []int
	var mask [][]bool
	if mode == ModeFixed {
		fixed, fmask, err := m.Tokenizer.EncodeFixed(text, FixedLength)
		if err != nil {
			return nil, fmt.Errorf("ella: tokenizing: %w", err)
		}
		ids = fixed
		row := make([]bool, len(fmask))
		for i, v := range fmask {
			row[i] = v != 0
		}
		mask = [][]bool{row}
	} else {
		ids = m.Tokenizer.Encode(text) // pieces + EOS, no padding
	}
	feats, err := t5.Encode([][]int{ids}, mask) // [1, N, Din]
	if err != nil {
		return nil, fmt.Errorf("ella: t5 encoder %s: %w", m.Config.T5Dir, err)
	}
	text2, err := m.ELLA.Prepare(feats) // [1, N, W]
	if err != nil {
		return nil, fmt.Errorf("ella connector %s: %w", m.Config.ELLAPath, err)
	}
	return &encoded{features: feats, text: text2, tokens: len(ids)}, nil
}

// ReleasePrompt forgets a handle (the LRU may keep the encoding).
func (p *Plugin) ReleasePrompt(_ context.Context, req *sdk.ReleasePromptRequest) (*sdk.ReleasePromptResponse, error) {
	p.mu.Lock()
	delete(p.handles, req.Handle)
	p.mu.Unlock()
	return &sdk.ReleasePromptResponse{}, nil
}

// Conditioning writes the connector's output for the handle's prompt at
// each of req.Timesteps into req.Out [B, Q, W] (B = len(Timesteps)).
func (p *Plugin) Conditioning(ctx context.Context, req *sdk.ConditioningRequest) (*sdk.ConditioningResponse, error) {
	p.mu.Lock()
	h, ok := p.handles[req.Handle]
	p.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("ella: unknown prompt handle %q (call EncodePrompt first; handles do not survive a plugin restart)", req.Handle)
	}
	e := h.m.ELLA
	b := len(req.Timesteps)
	if b == 0 {
		return nil, fmt.Errorf("ella: no timesteps")
	}
	if req.Out == nil {
		return nil, fmt.Errorf("ella: no output tensor")
	}
	want := []int{b, e.NumLatents, e.Width}
	if !slices.Equal(req.Out.Shape, want) {
		return nil, fmt.Errorf("ella: output tensor %q has shape %v, want %v", req.Out.Name, req.Out.Shape, want)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ts := req.Timesteps
	if allEqual(ts) {
		ts = ts[:1] // one connector run, copied to every row
	}
	if req.Out.OnDevice() {
		if err := p.conditioningGPU(h, req.Out, ts, b); err != nil {
			return nil, fmt.Errorf("ella connector %s (cuda): %w", h.m.Config.ELLAPath, err)
		}
		return &sdk.ConditioningResponse{Written: req.Out.TensorRef}, nil
	}
	out, err := req.Out.MutableFloat32()
	if err != nil {
		return nil, fmt.Errorf("ella: %w", err)
	}
	cond, err := e.Conditioning(h.enc.text, ts) // [len(ts), Q, W]
	if err != nil {
		return nil, fmt.Errorf("ella connector %s: %w", h.m.Config.ELLAPath, err)
	}
	fillRows(out, cond, b)
	return &sdk.ConditioningResponse{Written: req.Out.TensorRef}, nil
}

// fillRows writes cond [1 or b, Q, W] into out [b, Q, W].
func fillRows(out []float32, cond *nn.Tensor, b int) {
	if cond.Dim(0) == b {
		copy(out, cond.Data)
		return
	}
	row := len(cond.Data)
	for i := range b {
		copy(out[i*row:(i+1)*row], cond.Data)
	}
}

func allEqual(ts []float32) bool {
	for _, t := range ts[1:] {
		if t != ts[0] {
			return false
		}
	}
	return true
}
