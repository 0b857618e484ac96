// unet_blocks_cuda.go: the GPU forwards of the layers the U-Net and the
// ControlNet share (time embedding MLP, ResBlock, SpatialTransformer and its
// BasicTransformerBlocks, CrossAttention, FeedForward, Downsample, Upsample,
// the TimestepBlock walk), composed from nn's GPU ops on the same weight
// structs as the CPU Forward methods, line for line, with nn's fused ops
// where one replaces a chain (each call names the CPU lines it stands
// for), plus the per-block freeing of temporaries (imageRun.collect) that
// keeps a forward's peak memory near one block's activations.
//
// It owns no device memory of its own (gpuRun and deviceWeights in
// cuda_run.go do) and has no CPU fallback: a layer type without a GPU path
// is an error naming the block.
package models

import (
	"fmt"
	"slices"

	"github.com/sdbridge/sdbridge/nn"
)

// imageRun is gpuRun with the image models' layer compositions. Its
// methods return nil once an op failed (the sticky error is r.err).
type imageRun struct {
	*gpuRun
	fa *fusedAttn // fused attention projections, or nil (unet_attn_cuda.go)
}

func newImageRun(dw *deviceWeights) *imageRun { return &imageRun{gpuRun: newGPURun(dw)} }

// mark returns the position to collect back to.
func (r *imageRun) mark() int { return len(r.tmp) }

// collect frees the temporaries recorded since mark except keep (they stay
// recorded, so release frees them later).
func (r *imageRun) collect(mark int, keep ...*nn.GPUTensor) {
	if mark > len(r.tmp) {
		return
	}
	kept := r.tmp[:mark]
	for _, t := range r.tmp[mark:] {
		if t != nil && slices.Contains(keep, t) {
			kept = append(kept, t)
			continue
		}
		r.do(t.Free())
	}
	r.tmp = kept
}

// upload copies a CPU tensor to the device as a temporary.
func (r *imageRun) upload(t *nn.Tensor) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.Upload(t))
}

func (r *imageRun) silu(x *nn.GPUTensor) {
	if r.err == nil {
		r.do(r.g.SiLU(x))
	}
}

// addInPlace is a += b.
func (r *imageRun) addInPlace(a, b *nn.GPUTensor) {
	if r.err == nil {
		r.do(r.g.AddInPlace(a, b))
	}
}

// timeEmbed follows TimeEmbed.Forward and returns silu(emb) [B, 4mc]: every
// consumer of the embedding (each ResBlock's emb_layers) starts with SiLU,
// so it is applied once here instead of once per block (same values).
func (r *imageRun) timeEmbed(t *TimeEmbed, timesteps []float32) *nn.GPUTensor {
	return r.timeEmbedFrom(t, r.upload(sinusoid(t, timesteps)))
}

// sinusoid is timestep_embedding(t, mc, repeat_only=False) [B, mc]: tiny,
// made on the CPU.
func sinusoid(t *TimeEmbed, timesteps []float32) *nn.Tensor {
	return nn.TimestepEmbedding(timesteps, t.Channels, true, 0, 10000) // [B, mc]
}

// timeEmbedFrom is timeEmbed given the uploaded sinusoid s [B, mc].
func (r *imageRun) timeEmbedFrom(t *TimeEmbed, s *nn.GPUTensor) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	h := r.linear(s, t.Linear1) // [B, 4mc]
	r.silu(h)
	emb := r.linear(h, t.Linear2) // [B, 4mc]
	r.silu(emb)                   // emb_layers.0 of every ResBlock
	return emb
}

// resBlock follows ResBlock.Forward; embAct is silu(emb) [B, E]. Fused as
// nn's GPU ops allow: in_layers.2's bias rides with the time embedding
// into norm2 (GroupNormEx: h + conv_bias + emb_out, normalised, SiLU, in
// one pass), and a 1x1 skip conv accumulates into the output's GEMM.
func (r *imageRun) resBlock(rb *ResBlock, x, embAct *nn.GPUTensor) *nn.GPUTensor {
	h := r.groupNorm(x, rb.InNorm, true) // [B, in, H, W]: silu(in_layers.0(x))
	if r.err != nil {
		return nil
	}
	h = r.keep(r.g.Conv2d(h, r.w(rb.InConv.Weight), nil, rb.InConv.Stride, rb.InConv.Padding)) // [B, out, H, W], bias below

	e := r.linear(embAct, rb.EmbProj) // [B, out]: emb_out
	if r.err != nil {
		return nil
	}
	if rb.InConv.Bias != nil {
		r.do(r.g.AddRowBias(e, r.w(rb.InConv.Bias))) // [B, out]: emb_out + in_layers.2 bias
	}
	if r.err != nil {
		return nil
	}
	// h = h + emb_out[..., None, None]; h = silu(out_layers.0(h)), in place
	r.do(r.g.GroupNormEx(h, h, e, r.w(rb.OutNorm.Weight), r.w(rb.OutNorm.Bias), rb.OutNorm.Groups, rb.OutNorm.Eps, true))
	h = r.conv(h, rb.OutConv) // [B, out, H, W]
	if r.err != nil {
		return nil
	}
	if rb.Skip != nil {
		// skip_connection(x) + h: the 1x1 conv's GEMM adds onto h
		r.do(r.g.Conv2dAddInto(h, nil, x, r.w(rb.Skip.Weight), r.w(rb.Skip.Bias), rb.Skip.Stride, rb.Skip.Padding))
	} else {
		r.addInPlace(h, x) // [B, out, H, W]: x + h
	}
	return h
}

// spatialTransformer follows SpatialTransformer.Forward: x [B, C, H, W],
// ctx [B, L, D]. proj_in reads the normalised NCHW tensor directly and
// proj_out writes NCHW onto x (the residual): x is updated in place and
// returned (the U-Net's x here is its ResBlock's fresh output).
func (r *imageRun) spatialTransformer(s *SpatialTransformer, x, ctx *nn.GPUTensor) *nn.GPUTensor {
	t := r.groupNorm(x, s.Norm, false) // [B, C, H, W]
	if r.err != nil {
		return nil
	}
	// ldm (conv proj): x = proj_in(x); x = rearrange(x, 'b c h w -> b (h w) c')
	t = r.keep(r.g.LinearChannelsFirst(t, r.w(s.ProjIn.Weight), r.w(s.ProjIn.Bias))) // [B, HW, C]
	for _, b := range s.Blocks {
		t = r.transformerBlock(b, t, ctx) // [B, HW, C]
	}
	if r.err != nil {
		return nil
	}
	// x = rearrange(x, 'b (h w) c -> b c h w'); x = proj_out(x); x + x_in
	r.do(r.g.LinearToChannelsFirstAddInto(x, t, r.w(s.ProjOut.Weight), r.w(s.ProjOut.Bias))) // [B, C, H, W]
	return x
}

// transformerBlock follows BasicTransformerBlock.Forward: x [B, N, C], a
// temporary updated in place (each sublayer's output projection adds onto
// it in its GEMM) and returned.
func (r *imageRun) transformerBlock(b *BasicTransformerBlock, x, ctx *nn.GPUTensor) *nn.GPUTensor {
	n := r.layerNorm(x, b.Norm1) // [B, N, C]
	if qkv := r.fa.of(b.Attn1); qkv != nil {
		r.selfAttentionAdd(b.Attn1, qkv, n, x) // [B, N, C]: x = attn1(norm1(x)) + x
	} else {
		r.crossAttentionAdd(b.Attn1, n, n, x)
	}
	n = r.layerNorm(x, b.Norm2) // [B, N, C]
	if kv := r.fa.of(b.Attn2); kv != nil {
		r.contextAttentionAdd(b.Attn2, kv, n, ctx, x) // [B, N, C]: x = attn2(norm2(x), context) + x
	} else {
		r.crossAttentionAdd(b.Attn2, n, ctx, x)
	}
	n = r.layerNorm(x, b.Norm3)  // [B, N, C]
	r.feedForwardAdd(b.FF, n, x) // [B, N, C]: x = ff(norm3(x)) + x
	return x
}

// crossAttentionAdd adds CrossAttention.Forward(x, ctx) onto y [B, N, C].
func (r *imageRun) crossAttentionAdd(a *CrossAttention, x, ctx, y *nn.GPUTensor) {
	q := r.linear(x, a.ToQ)   // [B, N, C]
	k := r.linear(ctx, a.ToK) // [B, L, C]
	v := r.linear(ctx, a.ToV) // [B, L, C]
	if r.err != nil {
		return
	}
	o := r.keep(r.g.Attention(q, k, v, a.Heads, 0)) // [B, N, C]: scale dim_head^-0.5
	if r.err != nil {
		return
	}
	r.do(r.g.LinearAddInto(y, o, r.w(a.ToOut.Weight), r.w(a.ToOut.Bias))) // [B, N, C]: y + to_out(o)
}

// feedForwardAdd adds FeedForward.Forward(x) onto y [B, N, C]: the GEGLU
// gate takes the projection's bias in its own pass.
func (r *imageRun) feedForwardAdd(f *FeedForward, x, y *nn.GPUTensor) {
	if r.err != nil {
		return
	}
	h := r.keep(r.g.LinearGEGLU(x, r.w(f.Proj.Weight), r.w(f.Proj.Bias))) // [B, N, 4C]: x, gate = proj(x).chunk(2); x * gelu(gate)
	if r.err != nil {
		return
	}
	r.do(r.g.LinearAddInto(y, h, r.w(f.Out.Weight), r.w(f.Out.Bias))) // [B, N, C]: y + net.2(h)
}

// upsample follows Upsample.ForwardTo (h, w > 0) or Upsample.Forward (2x).
func (r *imageRun) upsample(u *Upsample, x *nn.GPUTensor, h, w int) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	if h <= 0 {
		h, w = 2*x.Shape[2], 2*x.Shape[3]
	}
	up := r.keep(r.g.UpsampleNearest(x, h, w)) // [B, C, h, w]: F.interpolate(x, size, mode="nearest")
	return r.conv(up, u.Conv)                  // [B, C, h, w]
}

// block follows TimestepBlock.forwardTo: an Upsample resizes to th x tw
// when th > 0, else doubles. Temporaries of the block other than its
// output are freed before it returns.
func (r *imageRun) block(b *TimestepBlock, x, embAct, ctx *nn.GPUTensor, th, tw int) *nn.GPUTensor {
	m := r.mark()
	for _, l := range b.Layers {
		if r.err != nil {
			return nil
		}
		switch l := l.(type) {
		case *InputConv:
			x = r.conv(x, l.Conv) // [B, mc, H, W]
		case *ResBlock:
			x = r.resBlock(l, x, embAct) // [B, out, H, W]
		case *SpatialTransformer:
			x = r.spatialTransformer(l, x, ctx) // [B, C, H, W]
		case *Downsample:
			x = r.conv(x, l.Op) // [B, C, ceil(H/2), ceil(W/2)]
		case *Upsample:
			x = r.upsample(l, x, th, tw) // [B, C, th, tw] or [B, C, 2H, 2W]
		default:
			r.do(fmt.Errorf("%s: layer %T has no GPU path", b.Name, l))
		}
	}
	r.collect(m, x)
	return x
}

// uploadAll puts every tensor of ts on the device now (so the first call
// does not pay for it and running out of memory shows at load time).
func uploadAll(dw *deviceWeights, ts []*nn.Tensor) error {
	for _, t := range ts {
		if _, err := dw.get(t); err != nil {
			return err
		}
	}
	return nil
}

// Weight lists, in forward order, for uploading a model's weights up front
// (nil entries are skipped by deviceWeights).

func linearWeights(l *nn.Linear) []*nn.Tensor { return []*nn.Tensor{l.Weight, l.Bias} }

func convWeights(c *nn.Conv2d) []*nn.Tensor { return []*nn.Tensor{c.Weight, c.Bias} }

func groupNormWeights(n *nn.GroupNorm) []*nn.Tensor { return []*nn.Tensor{n.Weight, n.Bias} }

func layerNormWeights(n *nn.LayerNorm) []*nn.Tensor { return []*nn.Tensor{n.Weight, n.Bias} }

func timeEmbedWeights(t *TimeEmbed) []*nn.Tensor {
	return append(linearWeights(t.Linear1), linearWeights(t.Linear2)...)
}

// blockWeights lists the weights of a TimestepBlock's layers.
func blockWeights(b *TimestepBlock) []*nn.Tensor {
	var ts []*nn.Tensor
	for _, l := range b.Layers {
		switch l := l.(type) {
		case *InputConv:
			ts = append(ts, convWeights(l.Conv)...)
		case *ResBlock:
			ts = append(ts, groupNormWeights(l.InNorm)...)
			ts = append(ts, convWeights(l.InConv)...)
			ts = append(ts, linearWeights(l.EmbProj)...)
			ts = append(ts, groupNormWeights(l.OutNorm)...)
			ts = append(ts, convWeights(l.OutConv)...)
			if l.Skip != nil {
				ts = append(ts, convWeights(l.Skip)...)
			}
		case *SpatialTransformer:
			ts = append(ts, groupNormWeights(l.Norm)...)
			ts = append(ts, linearWeights(l.ProjIn)...)
			for _, tb := range l.Blocks {
				ts = append(ts, layerNormWeights(tb.Norm1)...)
				for _, a := range []*CrossAttention{tb.Attn1, tb.Attn2} {
					ts = append(ts, a.ToQ.Weight, a.ToK.Weight, a.ToV.Weight)
					ts = append(ts, linearWeights(a.ToOut)...)
				}
				ts = append(ts, layerNormWeights(tb.Norm2)...)
				ts = append(ts, layerNormWeights(tb.Norm3)...)
				ts = append(ts, linearWeights(tb.FF.Proj)...)
				ts = append(ts, linearWeights(tb.FF.Out)...)
			}
			ts = append(ts, linearWeights(l.ProjOut)...)
		case *Downsample:
			ts = append(ts, convWeights(l.Op)...)
		case *Upsample:
			ts = append(ts, convWeights(l.Conv)...)
		}
	}
	return ts
}
