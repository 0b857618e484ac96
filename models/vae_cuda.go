// vae_cuda.go: the SD VAE on a CUDA GPU. VAEDecoderCUDA (Decode, as
// VAE.Decode: host.ImageDecoder) and VAEEncoderCUDA (Encode, as
// VAE.Encode) wrap a bound *VAE and walk the same weight structs as the CPU
// Forward methods with nn's GPU ops, freeing each block's temporaries as it
// goes (the decoder's full-resolution activations are large).
//
// Differences from the CPU code, all exact up to rounding: the attention
// blocks' single head (512 wide in SD) runs in nn's flash attention (its
// wide-head kernels), never materialising the [HW, HW] scores; ldm's
// Downsample (pad one zero row and column at the bottom and right, then a
// 3x3 stride-2 conv) is one conv with the asymmetric padding done inside
// im2col (Conv2dPadInto, no padded copy of the input); a resnet's conv1
// bias is added inside norm2 (GroupNormEx's [C] pre-add); the tiny edge
// work (latent / scale before post_quant_conv, taking the mean half of the
// moments and scaling it) is done on the CPU, as the latents live there.
// It does not tile large images or sample the latent distribution.
package models

import (
	"errors"
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// VAEDecoderCUDA runs a VAE's decoder (post_quant_conv + Decoder) on a GPU.
type VAEDecoderCUDA struct {
	V  *VAE
	g  *nn.GPU
	dw *deviceWeights
}

// NewVAEDecoderCUDA prepares v's decoder for g and uploads its weights.
func NewVAEDecoderCUDA(g *nn.GPU, v *VAE) (*VAEDecoderCUDA, error) {
	if g == nil || v == nil || v.Decoder == nil {
		return nil, errors.New("vae decoder (cuda): nil GPU or VAE")
	}
	d := &VAEDecoderCUDA{V: v, g: g, dw: newDeviceWeights(g)}
	ts := convWeights(v.PostQuantConv)
	ts = append(ts, vaeDecoderWeights(v.Decoder)...)
	if err := uploadAll(d.dw, ts); err != nil {
		d.Close()
		return nil, fmt.Errorf("vae decoder (cuda): uploading weights: %w", err)
	}
	return d, nil
}

// Decode maps sampler-space latents [B, embed, h, w] to images
// [B, out, 8h, 8w] as VAE.Decode (CPU tensors in and out). The input is not
// modified.
func (d *VAEDecoderCUDA) Decode(latent *nn.Tensor) (*nn.Tensor, error) {
	if err := checkVAEInput("latent", latent, d.V.Config.EmbedDim, 1); err != nil {
		return nil, err
	}
	z := latent.Clone()                   // [B, embed, h, w]
	nn.Scale(z, 1/d.V.Config.ScaleFactor) // [B, embed, h, w]
	r := d.newRun()
	defer r.release()
	h := r.upload(z)                    // [B, embed, h, w]
	h = r.conv(h, d.V.PostQuantConv)    // [B, z, h, w]
	img := r.vaeDecoder(d.V.Decoder, h) // [B, out, 8h, 8w]
	if r.err != nil {
		return nil, fmt.Errorf("vae decoder (cuda): %w", r.err)
	}
	out, err := img.Download()
	if err != nil {
		return nil, fmt.Errorf("vae decoder (cuda): downloading the image: %w", err)
	}
	return out, nil
}

// newRun starts a forward's op composer.
func (d *VAEDecoderCUDA) newRun() *imageRun { return newImageRun(d.dw) }

// Close frees the device copies of the weights.
func (d *VAEDecoderCUDA) Close() error {
	if d == nil || d.dw == nil {
		return nil
	}
	return d.dw.Close()
}

// VAEEncoderCUDA runs a VAE's encoder (Encoder + quant_conv) on a GPU.
type VAEEncoderCUDA struct {
	V  *VAE
	g  *nn.GPU
	dw *deviceWeights
}

// NewVAEEncoderCUDA prepares v's encoder for g and uploads its weights; v
// must have been loaded with its encoder (LoadVAE).
func NewVAEEncoderCUDA(g *nn.GPU, v *VAE) (*VAEEncoderCUDA, error) {
	if g == nil || v == nil {
		return nil, errors.New("vae encoder (cuda): nil GPU or VAE")
	}
	if v.Encoder == nil {
		return nil, errors.New("vae encoder (cuda): the VAE was loaded without its encoder (LoadVAEDecoder)")
	}
	e := &VAEEncoderCUDA{V: v, g: g, dw: newDeviceWeights(g)}
	if err := uploadAll(e.dw, e.weights()); err != nil {
		e.Close()
		return nil, fmt.Errorf("vae encoder (cuda): uploading weights: %w", err)
	}
	return e, nil
}

// Encode maps images [B, in, H, W] in [-1, 1] to the scaled latent mean
// [B, embed, H/8, W/8] as VAE.Encode (CPU tensors in and out).
func (e *VAEEncoderCUDA) Encode(img *nn.Tensor) (*nn.Tensor, error) {
	v := e.V
	if err := checkVAEInput("image", img, v.Config.InChannels, v.Config.Factor()); err != nil {
		return nil, err
	}
	r := newImageRun(e.dw)
	defer r.release()
	h := e.encoder(r, r.upload(img)) // [B, 2z, H/8, W/8]
	h = r.conv(h, v.QuantConv)       // [B, 2*embed, H/8, W/8]: mean, logvar
	if r.err != nil {
		return nil, fmt.Errorf("vae encoder (cuda): %w", r.err)
	}
	m, err := h.Download() // [B, 2*embed, H/8, W/8]
	if err != nil {
		return nil, fmt.Errorf("vae encoder (cuda): downloading the moments: %w", err)
	}
	b, ed := m.Shape[0], v.Config.EmbedDim
	hw := m.Shape[2] * m.Shape[3]
	mean := nn.New(b, ed, m.Shape[2], m.Shape[3]) // [B, embed, H/8, W/8]
	for n := 0; n < b; n++ {
		copy(mean.Data[n*ed*hw:(n+1)*ed*hw], m.Data[n*2*ed*hw:(n*2*ed+ed)*hw])
	}
	nn.Scale(mean, v.Config.ScaleFactor) // [B, embed, H/8, W/8]
	return mean, nil
}

// encoder follows VAEEncoder.Forward: [B, in, H, W] -> [B, 2z, H/f, W/f].
func (e *VAEEncoderCUDA) encoder(r *imageRun, x *nn.GPUTensor) *nn.GPUTensor {
	enc := e.V.Encoder
	h := r.conv(x, enc.ConvIn) // [B, ch, H, W]
	for _, d := range enc.Down {
		for j, b := range d.Blocks {
			h = r.vaeResnet(b, h) // [B, C_lvl, H_lvl, W_lvl]
			if d.Attns != nil {
				h = r.vaeAttn(d.Attns[j], h) // [B, C_lvl, H_lvl, W_lvl]
			}
		}
		if d.Downsample != nil {
			prev := h
			h = r.vaeDownsample(d.Downsample, h) // [B, C_lvl, (H_lvl-2)/2+1, (W_lvl-2)/2+1]
			r.drop(prev)
		}
	}
	h = r.vaeMid(enc.Mid, h)           // [B, C_last, H/f, W/f]
	r.groupNormInPlace(h, enc.NormOut) // [B, C_last, H/f, W/f]: silu(norm_out(h))
	return r.conv(h, enc.ConvOut)      // [B, 2z, H/f, W/f]
}

func (e *VAEEncoderCUDA) weights() []*nn.Tensor {
	enc := e.V.Encoder
	ts := convWeights(enc.ConvIn)
	for _, d := range enc.Down {
		for j, b := range d.Blocks {
			ts = append(ts, vaeResnetWeights(b)...)
			if d.Attns != nil {
				ts = append(ts, vaeAttnWeights(d.Attns[j])...)
			}
		}
		if d.Downsample != nil {
			ts = append(ts, convWeights(d.Downsample.Conv)...)
		}
	}
	ts = append(ts, vaeMidWeights(enc.Mid)...)
	ts = append(ts, groupNormWeights(enc.NormOut)...)
	ts = append(ts, convWeights(enc.ConvOut)...)
	return append(ts, convWeights(e.V.QuantConv)...)
}

// Close frees the device copies of the weights.
func (e *VAEEncoderCUDA) Close() error {
	if e == nil || e.dw == nil {
		return nil
	}
	return e.dw.Close()
}

// vaeDecoder follows VAEDecoder.Forward: z [B, z, h, w] -> [B, out, f*h, f*w].
func (r *imageRun) vaeDecoder(d *VAEDecoder, z *nn.GPUTensor) *nn.GPUTensor {
	h := r.conv(z, d.ConvIn) // [B, C_last, h, w]
	h = r.vaeMid(d.Mid, h)   // [B, C_last, h, w]
	for lvl := len(d.Up) - 1; lvl >= 0; lvl-- {
		u := &d.Up[lvl]
		for j, b := range u.Blocks {
			h = r.vaeResnet(b, h) // [B, C_lvl, h_lvl, w_lvl]
			if u.Attns != nil {
				h = r.vaeAttn(u.Attns[j], h) // [B, C_lvl, h_lvl, w_lvl]
			}
		}
		if u.Upsample != nil && r.err == nil {
			m := r.mark()
			up := r.keep(r.g.UpsampleNearest(h, 2*h.Shape[2], 2*h.Shape[3])) // [B, C_lvl, 2h_lvl, 2w_lvl]
			prev := h
			h = r.conv(up, u.Upsample.Conv) // [B, C_lvl, 2h_lvl, 2w_lvl]
			r.collect(m, h)
			r.drop(prev)
		}
	}
	r.groupNormInPlace(h, d.NormOut) // [B, ch, f*h, f*w]: silu(norm_out(h))
	return r.conv(h, d.ConvOut)      // [B, out, f*h, f*w]
}

// vaeMid follows VAEMid.Forward.
func (r *imageRun) vaeMid(m *VAEMid, x *nn.GPUTensor) *nn.GPUTensor {
	h := r.vaeResnet(m.Block1, x) // [B, C, h, w]
	h = r.vaeAttn(m.Attn1, h)     // [B, C, h, w]
	return r.vaeResnet(m.Block2, h)
}

// vaeResnet follows VAEResnetBlock.Forward; the block's temporaries and its
// input (when it is one of r's temporaries) are freed on return.
func (r *imageRun) vaeResnet(b *VAEResnetBlock, x *nn.GPUTensor) *nn.GPUTensor {
	m := r.mark()
	h := r.groupNorm(x, b.Norm1, true) // [B, in, H, W]: silu(norm1(x))
	if r.err != nil {
		return nil
	}
	h = r.keep(r.g.Conv2d(h, r.w(b.Conv1.Weight), nil, b.Conv1.Stride, b.Conv1.Padding)) // [B, out, H, W], bias below
	if r.err == nil {
		// silu(norm2(h + conv1 bias)): the bias is the norm's [C] pre-add; dropout is identity
		n := b.Norm2
		r.do(r.g.GroupNormEx(h, h, r.w(b.Conv1.Bias), r.w(n.Weight), r.w(n.Bias), n.Groups, n.Eps, true)) // [B, out, H, W]
	}
	h = r.conv(h, b.Conv2) // [B, out, H, W]
	if b.NinShortcut != nil && r.err == nil {
		// nin_shortcut(x) + h: the 1x1 conv's GEMM adds onto h
		r.do(r.g.Conv2dAddInto(h, nil, x, r.w(b.NinShortcut.Weight), r.w(b.NinShortcut.Bias), b.NinShortcut.Stride, b.NinShortcut.Padding))
	} else {
		r.addInPlace(h, x) // [B, out, H, W]: x + h
	}
	r.collect(m, h)
	r.drop(x)
	return h
}

// vaeAttn follows VAEAttnBlock.Forward: one head of width C over the H*W
// positions, x + proj_out(softmax(q k^T C^-0.5) v), with q, k, v read
// from the normed NCHW tensor by the GEMMs (no ChannelsLast pass) and the
// attention in nn's flash kernel (the scores are never stored). Adds into
// x and returns it.
func (r *imageRun) vaeAttn(a *VAEAttnBlock, x *nn.GPUTensor) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	m := r.mark()
	h := r.groupNorm(x, a.Norm, false) // [B, C, H, W]
	if r.err != nil {
		return nil
	}
	q := r.keep(r.g.LinearChannelsFirst(h, r.w(a.Q.Weight), r.w(a.Q.Bias))) // [B, HW, C]
	k := r.keep(r.g.LinearChannelsFirst(h, r.w(a.K.Weight), r.w(a.K.Bias))) // [B, HW, C]
	v := r.keep(r.g.LinearChannelsFirst(h, r.w(a.V.Weight), r.w(a.V.Bias))) // [B, HW, C]
	if r.err != nil {
		return nil
	}
	o := r.keep(r.g.Attention(q, k, v, 1, 0)) // [B, HW, C]: softmax(q k^T C^-0.5) v
	if r.err != nil {
		return nil
	}
	r.do(r.g.LinearToChannelsFirstAddInto(x, o, r.w(a.ProjOut.Weight), r.w(a.ProjOut.Bias))) // [B, C, H, W]: x + proj_out(h_)
	r.collect(m)
	return x
}

// groupNormInPlace is silu(norm(x)) written over x.
func (r *imageRun) groupNormInPlace(x *nn.GPUTensor, n *nn.GroupNorm) {
	if r.err != nil {
		return
	}
	r.do(r.g.GroupNormInto(x, x, r.w(n.Weight), r.w(n.Bias), n.Groups, n.Eps, true))
}

// vaeDownsample follows VAEDownsample.Forward: F.pad(x, (0, 1, 0, 1))
// then the 3x3 stride-2 conv, the padding done inside im2col.
func (r *imageRun) vaeDownsample(d *VAEDownsample, x *nn.GPUTensor) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	c := d.Conv
	pad := nn.ConvPad{Bottom: 1, Right: 1}
	oh, ow := pad.OutSize(x.Shape[2], x.Shape[3], c.Weight.Shape[2], c.Weight.Shape[3], c.Stride)
	y := r.keep(r.g.EmptyOf(x.DType, x.Shape[0], c.Weight.Shape[0], oh, ow)) // [B, out, (H-2)/2+1, (W-2)/2+1]
	if r.err != nil {
		return nil
	}
	r.do(r.g.Conv2dPadInto(y, x, r.w(c.Weight), r.w(c.Bias), c.Stride, pad))
	return y
}

func vaeResnetWeights(b *VAEResnetBlock) []*nn.Tensor {
	ts := groupNormWeights(b.Norm1)
	ts = append(ts, convWeights(b.Conv1)...)
	ts = append(ts, groupNormWeights(b.Norm2)...)
	ts = append(ts, convWeights(b.Conv2)...)
	if b.NinShortcut != nil {
		ts = append(ts, convWeights(b.NinShortcut)...)
	}
	return ts
}

// vaeAttnWeights lists the weights the GPU path uploads for a.
func vaeAttnWeights(a *VAEAttnBlock) []*nn.Tensor {
	ts := groupNormWeights(a.Norm)
	ts = append(ts, linearWeights(a.Q)...)
	ts = append(ts, linearWeights(a.K)...)
	ts = append(ts, linearWeights(a.V)...)
	return append(ts, linearWeights(a.ProjOut)...)
}

func vaeMidWeights(m *VAEMid) []*nn.Tensor {
	ts := vaeResnetWeights(m.Block1)
	ts = append(ts, vaeAttnWeights(m.Attn1)...)
	return append(ts, vaeResnetWeights(m.Block2)...)
}

func vaeDecoderWeights(d *VAEDecoder) []*nn.Tensor {
	ts := convWeights(d.ConvIn)
	ts = append(ts, vaeMidWeights(d.Mid)...)
	for lvl := len(d.Up) - 1; lvl >= 0; lvl-- {
		u := &d.Up[lvl]
		for j, b := range u.Blocks {
			ts = append(ts, vaeResnetWeights(b)...)
			if u.Attns != nil {
				ts = append(ts, vaeAttnWeights(u.Attns[j])...)
			}
		}
		if u.Upsample != nil {
			ts = append(ts, convWeights(u.Upsample.Conv)...)
		}
	}
	ts = append(ts, groupNormWeights(d.NormOut)...)
	return append(ts, convWeights(d.ConvOut)...)
}
