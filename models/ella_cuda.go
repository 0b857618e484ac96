// ella_cuda.go is ELLA's connector on a CUDA GPU: ELLACUDA runs an ELLA's
// weights (uploaded once, in the GPU's dtype) through the same steps as
// ella.go / ella_block.go / ella_time.go, line for line: Prepare (proj_in
// and the non-affine LayerNorm, once per prompt, kept on the device),
// Conditioning (time embedding, latents and the perceiver blocks, every
// timestep of a schedule in one batched pass), Forward and ForwardSteps,
// with CPU tensors at the edges or device tensors (the *GPU variants).
// The sinusoid of the timesteps is computed on the CPU (a [T, Ct] table)
// and uploaded. It does not run T5 (t5_cuda.go does).
package models

import (
	"fmt"
	"slices"

	"github.com/sdbridge/sdbridge/nn"
)

// ELLACUDA is an ELLA connector whose forward runs on a GPU.
type ELLACUDA struct {
	e  *ELLA
	dw *deviceWeights
}

// NewELLACUDA uploads e's weights to g and returns the GPU connector.
func NewELLACUDA(g *nn.GPU, e *ELLA) (*ELLACUDA, error) {
	c := &ELLACUDA{e: e, dw: newDeviceWeights(g)}
	for _, t := range ellaWeights(e) {
		if _, err := c.dw.get(t); err != nil {
			c.dw.Close()
			return nil, fmt.Errorf("ella cuda: upload weights: %w", err)
		}
	}
	return c, nil
}

// ELLATextCUDA is ELLAText on the device: LN(proj_in(x)) [B, N, W] in
// the GPU's dtype. Free it when the prompt is done.
type ELLATextCUDA struct {
	Norm *nn.GPUTensor // [B, N, W]
}

// Free releases the device tensor.
func (t *ELLATextCUDA) Free() error { return t.Norm.Free() }

// Prepare is ELLA.Prepare on the GPU for CPU text features x [B, N, Din].
func (c *ELLACUDA) Prepare(x *nn.Tensor) (*ELLATextCUDA, error) {
	if err := c.checkFeatures(x.Shape); err != nil {
		return nil, err
	}
	r := newTextRun(c.dw)
	defer r.release()
	xd := r.upload(x) // [B, N, Din]
	if r.err != nil {
		return nil, fmt.Errorf("ella cuda: upload text features: %w", r.err)
	}
	return c.PrepareGPU(xd)
}

// PrepareGPU is Prepare for features already on the device, e.g.
// T5CUDA.EncodeGPU's fp32 output (cast to the GPU's dtype first when it
// differs); x is not freed.
func (c *ELLACUDA) PrepareGPU(x *nn.GPUTensor) (*ELLATextCUDA, error) {
	if err := c.checkFeatures(x.Shape); err != nil {
		return nil, err
	}
	r := newTextRun(c.dw)
	defer r.release()
	if dt := c.dw.g.DType; x.DType != dt {
		x = r.keep(r.g.Cast(x, dt)) // [B, N, Din]
	}
	xp := r.linear(x, c.e.ProjIn)                          // [B, N, W]
	norm := r.layerNorm(xp, &nn.LayerNorm{Eps: ellaLNEps}) // [B, N, W]
	if r.err != nil {
		return nil, fmt.Errorf("ella cuda: prepare: %w", r.err)
	}
	r.forget(norm)
	return &ELLATextCUDA{Norm: norm}, nil
}

func (c *ELLACUDA) checkFeatures(s []int) error {
	if len(s) != 3 || s[0] < 1 || s[1] < 1 || s[2] != c.e.InputDim {
		return fmt.Errorf("%w: text features have shape %v, want [B, N>=1, %d]", ErrELLAShape, s, c.e.InputDim)
	}
	return nil
}

// Conditioning is ELLA.Conditioning on the GPU: [max(B, len(t)), Q, W].
func (c *ELLACUDA) Conditioning(text *ELLATextCUDA, t []float32) (*nn.Tensor, error) {
	y, err := c.ConditioningGPU(text, t) // [Bo, Q, W]
	if err != nil {
		return nil, err
	}
	defer y.Free()
	out, err := y.Download() // [Bo, Q, W]
	if err != nil {
		return nil, fmt.Errorf("ella cuda: download: %w", err)
	}
	return out, nil
}

// ConditioningGPU is Conditioning returning the device tensor [Bo, Q, W]
// (the caller frees it). All rows, e.g. every step of a schedule, go
// through the connector in one batch.
func (c *ELLACUDA) ConditioningGPU(text *ELLATextCUDA, t []float32) (*nn.GPUTensor, error) {
	e := c.e
	b := text.Norm.Shape[0]
	if len(t) == 0 || b != len(t) && b != 1 && len(t) != 1 {
		return nil, fmt.Errorf("%w: %d text rows with %d timesteps (want equal counts, or one of them 1)", ErrELLAShape, b, len(t))
	}
	bo := max(b, len(t))
	if len(t) != bo {
		t = slices.Repeat(t, bo) // one t for every row: repeatRows(temb) of the CPU path
	}
	r := newTextRun(c.dw)
	defer r.release()
	s := c.timeCondition(r, t)                // [Bo, E] silu(temb)
	ta := r.linear(s, e.TimeAware)            // [Bo, W]
	lat := r.addOuterRows(r.w(e.Latents), ta) // [Bo, Q, W] latents[None] + time_aware_linear(silu(temb))
	for i := range e.Blocks {
		lat = c.block(r, &e.Blocks[i], text.Norm, lat, s) // [Bo, Q, W]
	}
	if r.err != nil {
		return nil, fmt.Errorf("ella cuda: conditioning: %w", r.err)
	}
	r.forget(lat)
	return lat, nil // [Bo, Q, W]
}

// timeCondition is ELLATimeEmbedding.Forward followed by the SiLU every
// consumer applies: s = silu(temb) [T, E].
func (c *ELLACUDA) timeCondition(r *textRun, t []float32) *nn.GPUTensor {
	tm := &c.e.Time
	tf := r.upload(nn.TimestepEmbedding(t, tm.Channels, true, 0, 10000)) // [T, Ct]
	h := r.linear(tf, tm.Linear1)                                        // [T, E]
	r.silu(h)                                                            // [T, E]
	temb := r.linear(h, tm.Linear2)                                      // [T, E]
	r.silu(temb)                                                         // [T, E] s = silu(temb)
	return temb
}

// block is ELLABlock.Forward: the latents lat [B, Q, W] attend to
// themselves and the text xNorm [B or 1, N, W], then pass the MLP.
// Temporaries of the block are freed, except the returned latents and
// what the caller passed in.
func (c *ELLACUDA) block(r *textRun, b *ELLABlock, xNorm, lat, s *nn.GPUTensor) *nn.GPUTensor {
	br := newTextRun(c.dw) // this block's temporaries
	defer br.release()
	nl := br.adaNorm(lat, br.linear(s, b.LN1.Linear))    // [B, Q, W] normed_latents = ln_1(latents, temb)
	nx := br.modulate(xNorm, br.linear(s, b.LN2.Linear)) // [B, N, W] ln_2(x, temb)
	kv := br.concat(nl, nx)                              // [B, Q+N, W] torch.cat([normed_latents, ln_2(x)], dim=1)
	out := br.add(lat, c.attention(br, &b.Attn, nl, kv)) // [B, Q, W]
	f := br.adaNorm(out, br.linear(s, b.LNFF.Linear))    // [B, Q, W] ln_ff(latents, temb)
	br.addInPlace(out, c.mlp(br, &b.MLP, f))             // [B, Q, W]
	br.forget(out)
	return r.keep(out, br.err) // outlives the block
}

// attention is ELLAAttention.Forward: q [B, Lq, W], kv [B, Lk, W].
func (c *ELLACUDA) attention(r *textRun, a *ELLAAttention, q, kv *nn.GPUTensor) *nn.GPUTensor {
	qp := r.linear(q, a.Q)  // [B, Lq, W]
	kp := r.linear(kv, a.K) // [B, Lk, W]
	vp := r.linear(kv, a.V) // [B, Lk, W]
	if r.err != nil {
		return nil
	}
	o := r.keep(r.g.Attention(qp, kp, vp, a.Heads, 0)) // [B, Lq, W], scale 1/sqrt(W/H)
	return r.linear(o, a.Out)                          // [B, Lq, W]
}

// mlp is ELLAMLP.Forward: c_fc, squared ReLU, c_proj.
func (c *ELLACUDA) mlp(r *textRun, m *ELLAMLP, x *nn.GPUTensor) *nn.GPUTensor {
	h := r.linear(x, m.FC)            // [B, L, 4W]
	r.activate(h, nn.TextSquaredReLU) // [B, L, 4W]
	return r.linear(h, m.Proj)        // [B, L, W]
}

// Forward is ELLA.Forward on the GPU: features x [B, N, Din] and
// timesteps t (len B, or 1 for all rows) to the context [B, Q, W].
func (c *ELLACUDA) Forward(x *nn.Tensor, t []float32) (*nn.Tensor, error) {
	text, err := c.Prepare(x)
	if err != nil {
		return nil, err
	}
	defer text.Free()
	return c.Conditioning(text, t)
}

// ForwardSteps is ELLA.ForwardSteps on the GPU: one prompt x [1, N, Din]
// at every timestep of ts, in one batched pass: [len(ts), Q, W].
func (c *ELLACUDA) ForwardSteps(x *nn.Tensor, ts []float32) (*nn.Tensor, error) {
	if len(x.Shape) != 3 || x.Dim(0) != 1 {
		return nil, fmt.Errorf("%w: ForwardSteps takes one prompt [1, N, %d], got %v", ErrELLAShape, c.e.InputDim, x.Shape)
	}
	return c.Forward(x, ts)
}

// Close frees the device weights.
func (c *ELLACUDA) Close() error { return c.dw.Close() }

func (r *textRun) adaNorm(x, mod *nn.GPUTensor) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.AdaLayerNorm(x, mod, ellaLNEps))
}

func (r *textRun) modulate(x, mod *nn.GPUTensor) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.Modulate(x, mod))
}

func (r *textRun) concat(a, b *nn.GPUTensor) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.ConcatChannels(a, b))
}

func (r *textRun) addOuterRows(a, rows *nn.GPUTensor) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.AddOuterRows(a, rows))
}

func (r *textRun) silu(x *nn.GPUTensor) {
	if r.err == nil {
		r.do(r.g.SiLU(x))
	}
}

// ellaWeights lists every tensor the forward reads (the packed in-proj
// views once each).
func ellaWeights(e *ELLA) []*nn.Tensor {
	lin := func(ls ...*nn.Linear) []*nn.Tensor {
		var ts []*nn.Tensor
		for _, l := range ls {
			ts = append(ts, l.Weight, l.Bias)
		}
		return ts
	}
	ts := append(lin(e.Time.Linear1, e.Time.Linear2, e.TimeAware, e.ProjIn), e.Latents)
	for i := range e.Blocks {
		b := &e.Blocks[i]
		ts = append(ts, lin(b.LN1.Linear, b.LN2.Linear, b.LNFF.Linear, b.Attn.Q, b.Attn.K, b.Attn.V, b.Attn.Out, b.MLP.FC, b.MLP.Proj)...)
	}
	return ts
}
