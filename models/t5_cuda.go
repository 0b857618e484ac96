// t5_cuda.go is the T5 v1.1 encoder on a CUDA GPU: T5CUDA runs a
// T5Encoder's weights through the same layers as t5.go / t5_layers.go,
// line for line, with CPU ids and mask in and a CPU tensor out (Encode),
// or the device tensor (EncodeGPU). The position bias with the key mask
// folded in is built by the CPU code (T5RelativeBias.Forward, [1 or B, H,
// L, L]) and uploaded once per call.
//
// Precision: T5 runs in fp32 on the GPU whatever g.DType is (weights and
// activations), because T5 v1.1 / FLAN-T5 overflows fp16: its
// feed-forward outputs and residual stream exceed 65504 in real prompts
// (transformers keeps `wo` in fp32 and clamps the residual stream in fp16
// to survive; sdbridge's CPU EmulateFP16 reproduces that). fp32 needs no
// clamp and gives the CPU fp32 encoder's result; the price is memory
// (FLAN-T5-XL's encoder: 4.9 GB instead of 2.4 GB) and fp32 GEMMs for a
// model that runs once per prompt. The FP16 flags of an EmulateFP16
// encoder are therefore not emulated (its weights, already rounded to
// fp16 values, are used as they are). EncodeGPU's output is fp32; cast it
// (g.Cast) before feeding an fp16 ELLA.
package models

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// T5CUDA is a T5Encoder whose forward runs on a GPU, in fp32.
type T5CUDA struct {
	e    *T5Encoder
	g    *nn.GPU // the caller's GPU; the weights' handle is its fp32 view
	dw   *deviceWeights
	acts []nn.TextAct // per block, the activation its FF holds
}

// NewT5CUDA uploads e's weights to g (as fp32, see the file comment) and
// returns the GPU encoder.
func NewT5CUDA(g *nn.GPU, e *T5Encoder) (*T5CUDA, error) {
	c := &T5CUDA{e: e, g: g, dw: newDeviceWeights(g.WithDType(nn.GPUF32))}
	for i := range e.Blocks {
		act, err := textActOf(e.Blocks[i].FF.ActName)
		if err != nil {
			return nil, fmt.Errorf("t5 cuda: block %d feed-forward: %w", i, err)
		}
		c.acts = append(c.acts, act)
	}
	for _, t := range t5Weights(e) {
		if _, err := c.dw.get(t); err != nil {
			c.dw.Close()
			return nil, fmt.Errorf("t5 cuda: upload weights: %w", err)
		}
	}
	return c, nil
}

// DModel is the width of the encoder's output.
func (c *T5CUDA) DModel() int { return c.e.DModel() }

// Encode is T5Encoder.Encode on the GPU: last_hidden_state [B, L, D].
func (c *T5CUDA) Encode(ids [][]int, mask [][]bool) (*nn.Tensor, error) {
	y, err := c.EncodeGPU(ids, mask) // [B, L, D]
	if err != nil {
		return nil, err
	}
	defer y.Free()
	out, err := y.Download() // [B, L, D]
	if err != nil {
		return nil, fmt.Errorf("t5 cuda: download: %w", err)
	}
	return out, nil
}

// EncodeGPU is Encode returning the fp32 device tensor [B, L, D] (the
// caller frees it).
func (c *T5CUDA) EncodeGPU(ids [][]int, mask [][]bool) (*nn.GPUTensor, error) {
	e := c.e
	if err := t5CheckInput(e, ids, mask); err != nil {
		return nil, err
	}
	n := len(ids[0])
	c.dw.g = c.g.WithDType(nn.GPUF32)
	r := newTextRun(c.dw)
	defer r.release()
	h := r.embed(e.Embed, ids, nil)              // [B, L, D] shared[ids]
	bias := r.upload(e.RelBias.Forward(n, mask)) // [1 or B, H, L, L], computed once, reused by every block
	for i := range e.Blocks {
		h = c.block(r, &e.Blocks[i], c.acts[i], h, bias) // [B, L, D]
	}
	y := r.rmsNorm(h, &e.Final) // [B, L, D]
	if r.err != nil {
		return nil, fmt.Errorf("t5 cuda: %w", r.err)
	}
	r.forget(y)
	return y, nil
}

// block is T5Block.Forward: h [B, L, D] with the shared bias to the next
// hidden states [B, L, D]; the block's temporaries are freed.
func (c *T5CUDA) block(r *textRun, b *T5Block, act nn.TextAct, h, bias *nn.GPUTensor) *nn.GPUTensor {
	br := newTextRun(c.dw)
	defer br.release()
	a := c.attention(br, &b.Attn, br.rmsNorm(h, &b.AttnNorm), bias) // [B, L, D]
	h = br.add(h, a)                                                // [B, L, D]
	f := c.feedForward(br, &b.FF, act, br.rmsNorm(h, &b.FFNorm))    // [B, L, D]
	br.addInPlace(h, f)                                             // [B, L, D]
	br.forget(h)
	return r.keep(h, br.err)
}

// attention is T5Attention.Forward: no score scaling, the bias carries
// the position bias and the key mask.
func (c *T5CUDA) attention(r *textRun, a *T5Attention, x, bias *nn.GPUTensor) *nn.GPUTensor {
	q := r.linear(x, a.Q)                                                              // [B, L, H*d_kv]
	k := r.linear(x, a.K)                                                              // [B, L, H*d_kv]
	v := r.linear(x, a.V)                                                              // [B, L, H*d_kv]
	o := r.attention(q, k, v, a.Heads, nn.GPUAttentionOpts{NoScale: true, Bias: bias}) // [B, L, H*d_kv]
	return r.linear(o, a.O)                                                            // [B, L, D]
}

// feedForward is T5FeedForward.Forward: act(wi_0 x) * (wi_1 x) when
// gated, else act(wi x); then wo.
func (c *T5CUDA) feedForward(r *textRun, f *T5FeedForward, act nn.TextAct, x *nn.GPUTensor) *nn.GPUTensor {
	h := r.linear(x, f.Wi0) // [B, L, F]
	if f.Wi1 != nil {
		lin := r.linear(x, f.Wi1)    // [B, L, F]
		r.gatedActivate(h, lin, act) // [B, L, F] hidden_gelu * hidden_linear
	} else {
		r.activate(h, act) // [B, L, F]
	}
	return r.linear(h, f.Wo) // [B, L, D]
}

// Close frees the device weights.
func (c *T5CUDA) Close() error { return c.dw.Close() }

// t5CheckInput refuses what T5Encoder.Encode refuses, with its words.
func t5CheckInput(e *T5Encoder, ids [][]int, mask [][]bool) error {
	if len(ids) == 0 || len(ids[0]) == 0 {
		return fmt.Errorf("%w: no tokens (append EOS = 1 to every prompt)", ErrT5Input)
	}
	bsz, n, vocab := len(ids), len(ids[0]), e.VocabSize()
	if mask != nil && len(mask) != bsz {
		return fmt.Errorf("%w: mask has %d rows, ids %d", ErrT5Input, len(mask), bsz)
	}
	for b, row := range ids {
		if len(row) != n {
			return fmt.Errorf("%w: row %d has %d ids, row 0 has %d (pad to one length and pass a mask)", ErrT5Input, b, len(row), n)
		}
		if mask != nil && len(mask[b]) != n {
			return fmt.Errorf("%w: mask row %d has %d entries, want %d", ErrT5Input, b, len(mask[b]), n)
		}
		for i, id := range row {
			if id < 0 || id >= vocab {
				return fmt.Errorf("%w: id %d at [%d,%d] outside the vocabulary [0,%d)", ErrT5Input, id, b, i, vocab)
			}
		}
	}
	return nil
}

// t5Weights lists every tensor the forward reads (the relative bias table
// is read on the CPU).
func t5Weights(e *T5Encoder) []*nn.Tensor {
	ts := []*nn.Tensor{e.Embed, e.Final.Weight}
	for i := range e.Blocks {
		b := &e.Blocks[i]
		ts = append(ts, b.AttnNorm.Weight, b.Attn.Q.Weight, b.Attn.K.Weight, b.Attn.V.Weight, b.Attn.O.Weight,
			b.FFNorm.Weight, b.FF.Wi0.Weight, b.FF.Wo.Weight)
		if b.FF.Wi1 != nil {
			ts = append(ts, b.FF.Wi1.Weight)
		}
	}
	return ts
}
