// ella.go is ELLA's Timestep-aware Semantic Connector (TSC) for SD 1.5
// (TencentQQGYLab/ELLA model.py, ELLA() defaults, official key names): it
// turns T5 features [B, N, Din] and the U-Net's timestep into the U-Net's
// cross-attention context [B, Q, W] (Q = 64 latents). Sizes are inferred
// from the weights; the head count is not inferable and comes from the
// caller. It does not run T5, and holds no proj_out or final norm (the
// released model has output_dim=None).
package models

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// ELLADefaultHeads is the head count of the released model (ELLA() default).
const ELLADefaultHeads = 8

// ELLA is the connector: time embedding, learnable latents and the
// perceiver blocks.
type ELLA struct {
	Time      ELLATimeEmbedding // "time_embedding.*"
	Latents   *nn.Tensor        // [Q, W] "connector.latents"
	TimeAware *nn.Linear        // Weight [W, E] "connector.time_aware_linear"
	ProjIn    *nn.Linear        // Weight [W, Din] "connector.proj_in"
	Blocks    []ELLABlock       // "connector.perceiver_blocks.{i}"

	Width        int // W: output width, must equal the U-Net's context dim
	InputDim     int // Din: the T5 d_model
	NumLatents   int // Q: output tokens
	TimeChannels int // Ct: sinusoid width
	TimeEmbedDim int // E: time condition width
	Heads        int
}

// OpenELLA loads the connector from a safetensors file (weights are copied
// to float32, so the file is closed again). heads 0 means 8.
func OpenELLA(path string, heads int) (*ELLA, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ella: %w", err)
	}
	defer f.Close()
	e, err := LoadELLA(NewWeights(f), heads)
	if err != nil {
		return nil, fmt.Errorf("%w (file %s)", err, path)
	}
	return e, nil
}

// LoadELLA binds the connector from w (official key names at w's prefix).
// heads 0 means ELLADefaultHeads.
func LoadELLA(w *Weights, heads int) (*ELLA, error) {
	if heads == 0 {
		heads = ELLADefaultHeads
	}
	shape := func(key string, rank int) ([]int, error) {
		s := w.Shape(key)
		if s == nil {
			return nil, fmt.Errorf("ella: missing tensor %q: not an ELLA connector file", w.Prefix()+key)
		}
		if len(s) != rank {
			return nil, fmt.Errorf("ella: tensor %q has shape %v, want rank %d", w.Prefix()+key, s, rank)
		}
		return s, nil
	}
	lat, err := shape("connector.latents", 2)
	if err != nil {
		return nil, err
	}
	t1, err := shape("time_embedding.linear_1.weight", 2)
	if err != nil {
		return nil, err
	}
	t2, err := shape("time_embedding.linear_2.weight", 2)
	if err != nil {
		return nil, err
	}
	pin, err := shape("connector.proj_in.weight", 2)
	if err != nil {
		return nil, err
	}
	e := &ELLA{NumLatents: lat[0], Width: lat[1], TimeChannels: t1[1], TimeEmbedDim: t2[0], InputDim: pin[1], Heads: heads}
	q, wd, ct, emb, din := e.NumLatents, e.Width, e.TimeChannels, e.TimeEmbedDim, e.InputDim
	layers := 0
	for w.Has("connector.perceiver_blocks." + strconv.Itoa(layers) + ".attn.in_proj_weight") {
		layers++
	}
	switch {
	case layers == 0:
		return nil, fmt.Errorf("ella: missing tensor %q: no perceiver blocks", w.Prefix()+"connector.perceiver_blocks.0.attn.in_proj_weight")
	case heads < 0 || wd%heads != 0:
		return nil, fmt.Errorf("ella: width %d (from %q) is not divisible by %d heads", wd, w.Prefix()+"connector.latents", heads)
	case ct%2 != 0:
		return nil, fmt.Errorf("ella: time channels %d (from %q) must be even", ct, w.Prefix()+"time_embedding.linear_1.weight")
	}

	e.Time = ELLATimeEmbedding{
		Linear1:  w.Linear("time_embedding.linear_1", ct, t1[0], true),
		Linear2:  w.Linear("time_embedding.linear_2", t1[0], emb, true),
		Channels: ct,
	}
	c := w.Sub("connector.")
	e.Latents = c.Tensor("latents", q, wd) // [Q, W]
	e.TimeAware = c.Linear("time_aware_linear", emb, wd, true)
	e.ProjIn = c.Linear("proj_in", din, wd, true)
	e.Blocks = make([]ELLABlock, layers)
	for i := range e.Blocks {
		b := c.Sub("perceiver_blocks." + strconv.Itoa(i) + ".")
		inW := b.Tensor("attn.in_proj_weight", 3*wd, wd) // [3W, W]
		inB := b.Tensor("attn.in_proj_bias", 3*wd)       // [3W]
		e.Blocks[i] = ELLABlock{
			LN1:  ELLAAdaLayerNorm{Linear: b.Linear("ln_1.linear", emb, 2*wd, true)},
			LN2:  ELLAAdaLayerNorm{Linear: b.Linear("ln_2.linear", emb, 2*wd, true)},
			LNFF: ELLAAdaLayerNorm{Linear: b.Linear("ln_ff.linear", emb, 2*wd, true)},
			Attn: ELLAAttention{Out: b.Linear("attn.out_proj", wd, wd, true), Heads: heads},
			MLP: ELLAMLP{
				FC:   b.Linear("mlp.c_fc", wd, 4*wd, true),
				Proj: b.Linear("mlp.c_proj", 4*wd, wd, true),
			},
		}
		if inW != nil && inB != nil {
			a := &e.Blocks[i].Attn
			a.Q, a.K, a.V = packedRows(inW, inB, 0, wd), packedRows(inW, inB, 1, wd), packedRows(inW, inB, 2, wd)
		}
	}
	if err := w.Err(); err != nil {
		return nil, fmt.Errorf("ella: %w", err)
	}
	for _, k := range w.Unused() {
		if strings.HasPrefix(k, w.Prefix()+"connector.") || strings.HasPrefix(k, w.Prefix()+"time_embedding.") {
			return nil, fmt.Errorf("ella: unexpected tensor %q (this connector has %d blocks and no proj_out or final norm)", k, layers)
		}
	}
	return e, nil
}

// packedRows returns the i-th [W, W] block of a packed in-projection as a
// Linear sharing the storage.
func packedRows(wt, bias *nn.Tensor, i, w int) *nn.Linear {
	return &nn.Linear{
		Weight: nn.From(wt.Data[i*w*w:(i+1)*w*w], w, w), // [W, W]
		Bias:   nn.From(bias.Data[i*w:(i+1)*w], w),      // [W]
	}
}

// ErrELLAShape marks a width or shape that does not fit the connector.
var ErrELLAShape = errors.New("ella: shape mismatch")

// CheckContextDim reports whether the connector can feed a U-Net whose
// cross-attention context width is contextDim (768 for SD 1.5).
func (e *ELLA) CheckContextDim(contextDim int) error {
	if e.Width != contextDim {
		return fmt.Errorf("%w: the connector's width is %d but the U-Net's cross-attention context dim is %d (ELLA-SD1.5 needs an SD 1.5 U-Net)", ErrELLAShape, e.Width, contextDim)
	}
	return nil
}

// CheckInputDim reports whether text features of width dModel (the T5
// encoder's d_model) fit proj_in.
func (e *ELLA) CheckInputDim(dModel int) error {
	if e.InputDim != dModel {
		return fmt.Errorf("%w: the connector's proj_in takes %d features but the text encoder gives %d (ELLA-SD1.5 needs flan-t5-xl, d_model 2048)", ErrELLAShape, e.InputDim, dModel)
	}
	return nil
}

// ELLAText is a prompt's timestep-independent part: the text projected by
// proj_in and normalised by the non-affine LayerNorm (the modulation
// depends on t and is applied per step).
type ELLAText struct {
	Norm *nn.Tensor // [B, N, W] LN(proj_in(x))
}

// Prepare projects and normalises text features x [B, N, Din] once per
// prompt.
func (e *ELLA) Prepare(x *nn.Tensor) (*ELLAText, error) {
	if len(x.Shape) != 3 || x.Dim(0) < 1 || x.Dim(1) < 1 || x.Dim(2) != e.InputDim {
		return nil, fmt.Errorf("%w: text features have shape %v, want [B, N>=1, %d]", ErrELLAShape, x.Shape, e.InputDim)
	}
	xp := e.ProjIn.Forward(x)                  // [B, N, W]
	return &ELLAText{Norm: layerNorm(xp)}, nil // [B, N, W]
}

// Conditioning runs the connector for prepared text [B, N, W] and
// timesteps t. With B == len(t) each row gets its own t; with B == 1 the
// text is shared by every t (one output per sampler step); with len(t) == 1
// every row gets the same t. The result is [max(B, len(t)), Q, W].
func (e *ELLA) Conditioning(text *ELLAText, t []float32) (*nn.Tensor, error) {
	b := text.Norm.Dim(0)
	if len(t) == 0 || b != len(t) && b != 1 && len(t) != 1 {
		return nil, fmt.Errorf("%w: %d text rows with %d timesteps (want equal counts, or one of them 1)", ErrELLAShape, b, len(t))
	}
	bo := max(b, len(t))
	temb := e.Time.Forward(t) // [T, E]
	nn.SiLU(temb)             // [T, E] s = silu(temb); every consumer takes the activated form
	s := temb                 // [T, E]
	if len(t) != bo {
		s = repeatRows(temb, bo) // [Bo, E]
	}
	ta := e.TimeAware.Forward(s) // [Bo, W]
	q, w := e.NumLatents, e.Width
	lat := nn.New(bo, q, w) // [Bo, Q, W] latents[None] + time_aware_linear(silu(temb))
	for i := range bo {
		for j := range q {
			dst := lat.Data[(i*q+j)*w : (i*q+j+1)*w] // [W] latent j of item i
			for c := range dst {
				dst[c] = e.Latents.Data[j*w+c] + ta.Data[i*w+c]
			}
		}
	}
	for i := range e.Blocks {
		lat = e.Blocks[i].Forward(text.Norm, lat, s) // [Bo, Q, W]
	}
	return lat, nil // [Bo, Q, W]
}

// repeatRows repeats the single row of x [1, E] n times: [n, E].
func repeatRows(x *nn.Tensor, n int) *nn.Tensor {
	e := x.Dim(1)
	out := nn.New(n, e) // [n, E]
	for i := range n {
		copy(out.Data[i*e:(i+1)*e], x.Data[:e])
	}
	return out
}

// Forward maps text features x [B, N, Din] and timesteps t (len B, or 1 for
// all rows) to the context [B, Q, W]. Rows of one batch share N; prompts of
// different lengths go through separate calls (padding would change the
// result: the connector attends to every text position).
func (e *ELLA) Forward(x *nn.Tensor, t []float32) (*nn.Tensor, error) {
	text, err := e.Prepare(x)
	if err != nil {
		return nil, err
	}
	return e.Conditioning(text, t)
}

// ForwardSteps runs one prompt x [1, N, Din] at several timesteps (e.g. all
// steps of a schedule) and returns [len(ts), Q, W].
func (e *ELLA) ForwardSteps(x *nn.Tensor, ts []float32) (*nn.Tensor, error) {
	if len(x.Shape) != 3 || x.Dim(0) != 1 {
		return nil, fmt.Errorf("%w: ForwardSteps takes one prompt [1, N, %d], got %v", ErrELLAShape, e.InputDim, x.Shape)
	}
	return e.Forward(x, ts)
}
