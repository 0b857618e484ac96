// unet_attn_cuda.go: fused attention projections for the U-Net and the
// ControlNet on the GPU. Each self-attention's to_q, to_k, to_v weights are
// uploaded as one [3C, C] tensor (one GEMM gives q, k and v side by side,
// read in place by nn's AttentionQKV) and each cross-attention's to_k,
// to_v as one [2C, D] tensor (AttentionKV). The single weights stay
// addressable: deviceWeights maps each CPU weight to its rows of the fused
// tensor (a view), so Sync and in-place device patching (DeviceWeight)
// update the fused copy.
//
// It does not fuse across blocks or change the CPU model.
package models

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// fusedAttn holds the fused projection weights of a model's attentions.
type fusedAttn struct {
	w       map[*CrossAttention]*nn.GPUTensor // [3C, C] (self) or [2C, D] (cross)
	parents []*nn.GPUTensor                   // what Close frees
}

// fuseAttention uploads the fused projections of every transformer block
// in blocks and registers the per-weight views in dw (before any other
// upload of those weights).
func fuseAttention(dw *deviceWeights, blocks ...*TimestepBlock) (*fusedAttn, error) {
	f := &fusedAttn{w: map[*CrossAttention]*nn.GPUTensor{}}
	for _, b := range blocks {
		for _, l := range b.Layers {
			st, ok := l.(*SpatialTransformer)
			if !ok {
				continue
			}
			for _, tb := range st.Blocks {
				if err := f.add(dw, tb.Attn1, tb.Attn1.ToQ.Weight, tb.Attn1.ToK.Weight, tb.Attn1.ToV.Weight); err != nil {
					return f, err
				}
				if err := f.add(dw, tb.Attn2, tb.Attn2.ToK.Weight, tb.Attn2.ToV.Weight); err != nil {
					return f, err
				}
			}
		}
	}
	return f, nil
}

// add uploads ws stacked on rows ([sum of rows, in]) as a's fused weight
// and maps each of ws to its rows.
func (f *fusedAttn) add(dw *deviceWeights, a *CrossAttention, ws ...*nn.Tensor) error {
	for _, w := range ws {
		if w == nil || len(w.Shape) != 2 || w.Shape[1] != ws[0].Shape[1] {
			return fmt.Errorf("fusing attention projections: weight shapes differ")
		}
		if _, done := dw.m[w]; done {
			return fmt.Errorf("fusing attention projections: weight %v already on the device", w.Shape)
		}
	}
	cat := nn.Concat(0, ws...) // [sum of rows, in]
	d, err := dw.g.Upload(cat)
	if err != nil {
		return err
	}
	f.parents = append(f.parents, d)
	f.w[a] = d
	off := 0
	for _, w := range ws {
		v, err := d.View(off, w.Shape...) // [rows, in]
		if err != nil {
			return err
		}
		dw.m[w] = v
		off += w.Numel()
	}
	return nil
}

// of returns a's fused projection, or nil (not fused, or no fusedAttn).
func (f *fusedAttn) of(a *CrossAttention) *nn.GPUTensor {
	if f == nil {
		return nil
	}
	return f.w[a]
}

// close frees the fused tensors (the views in deviceWeights go with them).
func (f *fusedAttn) close() error {
	if f == nil {
		return nil
	}
	var first error
	for _, d := range f.parents {
		if err := d.Free(); err != nil && first == nil {
			first = err
		}
	}
	f.parents, f.w = nil, nil
	return first
}

// selfAttentionAdd adds CrossAttention.Forward(x, x) onto y [B, N, C]
// with the fused [3C, C] projection qkv.
func (r *imageRun) selfAttentionAdd(a *CrossAttention, qkv, x, y *nn.GPUTensor) {
	if r.err != nil {
		return
	}
	p := r.keep(r.g.Linear(x, qkv, nil)) // [B, N, 3C]: q, k, v = to_q(x), to_k(x), to_v(x)
	if r.err != nil {
		return
	}
	o := r.keep(r.g.AttentionQKV(p, a.Heads, nn.GPUAttentionOpts{})) // [B, N, C]: scale dim_head^-0.5
	if r.err != nil {
		return
	}
	r.do(r.g.LinearAddInto(y, o, r.w(a.ToOut.Weight), r.w(a.ToOut.Bias))) // [B, N, C]: y + to_out(o)
}

// contextAttentionAdd adds CrossAttention.Forward(x, ctx) onto y [B, N, C]
// with the fused [2C, D] projection kv of the context.
func (r *imageRun) contextAttentionAdd(a *CrossAttention, kv, x, ctx, y *nn.GPUTensor) {
	q := r.linear(x, a.ToQ) // [B, N, C]
	if r.err != nil {
		return
	}
	p := r.keep(r.g.Linear(ctx, kv, nil)) // [B, L, 2C]: k, v = to_k(ctx), to_v(ctx)
	if r.err != nil {
		return
	}
	o := r.keep(r.g.AttentionKV(q, p, a.Heads, nn.GPUAttentionOpts{})) // [B, N, C]
	if r.err != nil {
		return
	}
	r.do(r.g.LinearAddInto(y, o, r.w(a.ToOut.Weight), r.w(a.ToOut.Bias))) // [B, N, C]: y + to_out(o)
}
