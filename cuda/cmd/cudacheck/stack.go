// stack.go: one real SD1.5 layer stack on the GPU, checked against the
// CPU models: input_blocks.1 (ResBlock 320->320 with the 1280-wide time
// embedding, then a SpatialTransformer with 8 heads of 40 and a 768-wide
// context) and a ResBlock 320->640 with its 1x1 skip plus a 640-channel
// transformer (input_blocks.4's shapes), on random weights. The GPU forward
// here is composed from nn's GPU ops by hand, following models' Forward
// line by line; it belongs in models once models has a device path, and is
// here only so the device check can run a real stack. It does not cover
// up/down sampling or the whole U-Net.
package main

import (
	"fmt"
	"math"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
)

// gpuRun composes GPU ops with a sticky error and frees its temporaries.
type gpuRun struct {
	g       *nn.GPU
	err     error
	tmp     []*nn.GPUTensor
	weights map[*nn.Tensor]*nn.GPUTensor
}

func newGPURun(g *nn.GPU) *gpuRun { return &gpuRun{g: g, weights: map[*nn.Tensor]*nn.GPUTensor{}} }

// keep records t as a temporary (freed by release) and passes it on.
func (r *gpuRun) keep(t *nn.GPUTensor, err error) *nn.GPUTensor {
	if r.err == nil && err != nil {
		r.err = err
	}
	if t != nil {
		r.tmp = append(r.tmp, t)
	}
	return t
}

// w uploads a weight once (nil stays nil).
func (r *gpuRun) w(t *nn.Tensor) *nn.GPUTensor {
	if t == nil || r.err != nil {
		return nil
	}
	if d, ok := r.weights[t]; ok {
		return d
	}
	d, err := r.g.Upload(t)
	if err != nil {
		r.err = err
		return nil
	}
	r.weights[t] = d
	return d
}

func (r *gpuRun) release() {
	for _, t := range r.tmp {
		t.Free()
	}
	r.tmp = nil
}

func (r *gpuRun) close() {
	r.release()
	for _, t := range r.weights {
		t.Free()
	}
}

func (r *gpuRun) do(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *gpuRun) linear(x *nn.GPUTensor, l *nn.Linear) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.Linear(x, r.w(l.Weight), r.w(l.Bias)))
}

func (r *gpuRun) conv(x *nn.GPUTensor, c *nn.Conv2d) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.Conv2d(x, r.w(c.Weight), r.w(c.Bias), c.Stride, c.Padding))
}

func (r *gpuRun) groupNorm(x *nn.GPUTensor, n *nn.GroupNorm, silu bool) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.GroupNorm(x, r.w(n.Weight), r.w(n.Bias), n.Groups, n.Eps, silu))
}

func (r *gpuRun) layerNorm(x *nn.GPUTensor, n *nn.LayerNorm) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.LayerNorm(x, r.w(n.Weight), r.w(n.Bias), n.Eps))
}

// resBlock follows models.ResBlock.Forward.
func (r *gpuRun) resBlock(rb *models.ResBlock, x, emb *nn.GPUTensor) *nn.GPUTensor {
	h := r.groupNorm(x, rb.InNorm, true) // [B, in, H, W]
	h = r.conv(h, rb.InConv)             // [B, out, H, W]
	if r.err != nil {
		return nil
	}
	e, err := r.g.Empty(emb.Shape...) // [B, E]
	r.keep(e, err)
	if r.err != nil {
		return nil
	}
	r.do(e.Buf.CopyFrom(emb.Buf, 4*emb.Numel()))
	r.do(r.g.SiLU(e))
	e = r.linear(e, rb.EmbProj) // [B, out]
	if r.err != nil {
		return nil
	}
	r.do(r.g.AddBatchChannelBias(h, e)) // [B, out, H, W]
	h = r.groupNorm(h, rb.OutNorm, true)
	h = r.conv(h, rb.OutConv) // [B, out, H, W]
	if r.err != nil {
		return nil
	}
	if rb.Skip != nil {
		sk := r.conv(x, rb.Skip) // [B, out, H, W]
		if r.err != nil {
			return nil
		}
		r.do(r.g.AddInPlace(h, sk)) // skip_connection(x) + h
	} else {
		r.do(r.g.AddInPlace(h, x)) // x + h
	}
	return h
}

func (r *gpuRun) attention(a *models.CrossAttention, x, ctx *nn.GPUTensor) *nn.GPUTensor {
	q := r.linear(x, a.ToQ)   // [B, N, C]
	k := r.linear(ctx, a.ToK) // [B, L, C]
	v := r.linear(ctx, a.ToV) // [B, L, C]
	if r.err != nil {
		return nil
	}
	o := r.keep(r.g.Attention(q, k, v, a.Heads, 0)) // [B, N, C]
	if r.err != nil {
		return nil
	}
	return r.linear(o, a.ToOut) // [B, N, C]
}

// spatialTransformer follows models.SpatialTransformer.Forward.
func (r *gpuRun) spatialTransformer(s *models.SpatialTransformer, x, ctx *nn.GPUTensor) *nn.GPUTensor {
	h, w := x.Shape[2], x.Shape[3]
	t := r.groupNorm(x, s.Norm, false) // [B, C, H, W]
	if r.err != nil {
		return nil
	}
	t = r.keep(r.g.ChannelsLast(t)) // [B, HW, C]
	t = r.linear(t, s.ProjIn)       // [B, HW, C]
	for _, b := range s.Blocks {
		n := r.layerNorm(t, b.Norm1)
		a := r.attention(b.Attn1, n, n)
		if r.err != nil {
			return nil
		}
		t = r.keep(r.g.Add(t, a)) // x = attn1(norm1(x)) + x
		n = r.layerNorm(t, b.Norm2)
		a = r.attention(b.Attn2, n, ctx)
		if r.err != nil {
			return nil
		}
		r.do(r.g.AddInPlace(t, a)) // x = attn2(norm2(x), context) + x
		n = r.layerNorm(t, b.Norm3)
		f := r.linear(n, b.FF.Proj) // [B, N, 8C]
		if r.err != nil {
			return nil
		}
		f = r.keep(r.g.GEGLU(f)) // [B, N, 4C]
		f = r.linear(f, b.FF.Out)
		if r.err != nil {
			return nil
		}
		r.do(r.g.AddInPlace(t, f)) // x = ff(norm3(x)) + x
	}
	t = r.linear(t, s.ProjOut) // [B, HW, C]
	if r.err != nil {
		return nil
	}
	out := r.keep(r.g.ChannelsFirst(t, h, w)) // [B, C, H, W]
	if r.err != nil {
		return nil
	}
	r.do(r.g.AddInPlace(out, x)) // x + x_in
	return out
}

// Random layers with PyTorch-default-like scales (U(-1/sqrt(fan_in), +)).
func rLinear(in, out int, bias bool) *nn.Linear {
	s := float32(1 / math.Sqrt(float64(in)))
	l := &nn.Linear{Weight: randT(s, out, in)}
	if bias {
		l.Bias = randT(s, out)
	}
	return l
}

func rConv(in, out, k, pad int) *nn.Conv2d {
	s := float32(1 / math.Sqrt(float64(in*k*k)))
	return &nn.Conv2d{Weight: randT(s, out, in, k, k), Bias: randT(s, out), Stride: 1, Padding: pad}
}

func rGN(c int, eps float32) *nn.GroupNorm {
	w := randT(0.2, c)
	for i := range w.Data {
		w.Data[i] += 1
	}
	return &nn.GroupNorm{Groups: 32, Eps: eps, Weight: w, Bias: randT(0.2, c)}
}

func rLN(c int) *nn.LayerNorm {
	w := randT(0.2, c)
	for i := range w.Data {
		w.Data[i] += 1
	}
	return &nn.LayerNorm{Eps: 1e-5, Weight: w, Bias: randT(0.2, c)}
}

func rResBlock(in, out, emb int) *models.ResBlock {
	rb := &models.ResBlock{
		InNorm: rGN(in, 1e-5), InConv: rConv(in, out, 3, 1), EmbProj: rLinear(emb, out, true),
		OutNorm: rGN(out, 1e-5), OutConv: rConv(out, out, 3, 1),
	}
	if in != out {
		rb.Skip = rConv(in, out, 1, 0)
	}
	return rb
}

func rAttn(c, d, heads int) *models.CrossAttention {
	return &models.CrossAttention{Heads: heads, ToQ: rLinear(c, c, false), ToK: rLinear(d, c, false), ToV: rLinear(d, c, false), ToOut: rLinear(c, c, true)}
}

func rTransformer(c, heads, ctxDim int) *models.SpatialTransformer {
	return &models.SpatialTransformer{
		Norm: rGN(c, 1e-6), ProjIn: rLinear(c, c, true), ProjOut: rLinear(c, c, true),
		Blocks: []*models.BasicTransformerBlock{{
			Norm1: rLN(c), Attn1: rAttn(c, c, heads), Norm2: rLN(c), Attn2: rAttn(c, ctxDim, heads),
			Norm3: rLN(c), FF: &models.FeedForward{Proj: rLinear(c, 8*c, true), Out: rLinear(4*c, c, true)},
		}},
	}
}

// stackCase is ResBlock(in->out) then SpatialTransformer(out).
type stackCase struct {
	in, out, hw int
	rb          *models.ResBlock
	st          *models.SpatialTransformer
}

func newStack(in, out, hw int) *stackCase {
	return &stackCase{in: in, out: out, hw: hw, rb: rResBlock(in, out, 1280), st: rTransformer(out, 8, 768)}
}

// gpuForward runs the stack on the GPU; the result is one of r's temporaries.
func (s *stackCase) gpuForward(r *gpuRun, x, emb, ctx *nn.GPUTensor) (*nn.GPUTensor, error) {
	h := r.resBlock(s.rb, x, emb)
	if r.err != nil {
		return nil, r.err
	}
	out := r.spatialTransformer(s.st, h, ctx)
	return out, r.err
}

func checkStacks(g *nn.GPU) {
	for _, tc := range []struct{ in, out, hw int }{{320, 320, 32}, {320, 640, 16}} {
		name := fmt.Sprintf("sd15 stack ResBlock %d->%d + SpatialTransformer(%d, 8 heads) at [2,%d,%d,%d], ctx [2,77,768]", tc.in, tc.out, tc.out, tc.in, tc.hw, tc.hw)
		guard(name, func() error {
			s := newStack(tc.in, tc.out, tc.hw)
			x, emb, ctx := randT(1, 2, tc.in, tc.hw, tc.hw), randT(1, 2, 1280), randT(1, 2, 77, 768)
			want := s.st.Forward(s.rb.Forward(x, emb), ctx)
			r := newGPURun(g)
			defer r.close()
			dx, demb, dctx := r.w(x), r.w(emb), r.w(ctx)
			y, err := s.gpuForward(r, dx, demb, dctx)
			if err != nil {
				return err
			}
			compare(name, down(y), want.Data, 1e-4)
			return nil
		})
	}
}

// timeStack times input_blocks.1 (ResBlock 320 + transformer) at the
// 512px latent size [2, 320, 64, 64] (one CFG step's batch), temporaries
// allocated per call as the composed path does today.
func timeStack(g *nn.GPU, hw int) {
	guard("time sd15 stack", func() error {
		s := newStack(320, 320, hw)
		r := newGPURun(g)
		defer r.close()
		x, emb, ctx := r.w(randT(1, 2, 320, hw, hw)), r.w(randT(1, 2, 1280)), r.w(randT(1, 2, 77, 768))
		if r.err != nil {
			return r.err
		}
		name := fmt.Sprintf("sd15 input_blocks.1 fp32 [2,320,%d,%d] (ResBlock + SpatialTransformer, unfused, allocs per op)", hw, hw)
		bench(g, name, 0, 0, func() error {
			_, err := s.gpuForward(r, x, emb, ctx)
			r.release()
			return err
		})
		return nil
	})
}
