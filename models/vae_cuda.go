// vae_cuda.go: the SD VAE on a CUDA GPU. VAEDecoderCUDA (Decode, as
// VAE.Decode: host.ImageDecoder) and VAEEncoderCUDA (Encode, as
// VAE.Encode) wrap a bound *VAE and walk the same weight structs as the CPU
// Forward methods with nn's GPU ops, freeing each block's temporaries as it
// goes (the decoder's full-resolution activations are large).
//
// Differences from the CPU code, all exact up to rounding: the attention
// blocks' single head (512 wide in SD) runs as two GEMMs per batch item
// around a row softmax with the [HW, HW] scores materialised, the scale
// folded into q's projection; ldm's Downsample (pad one zero row and column
// at the bottom and right, then a 3x3 stride-2 conv) runs as one 4x4
// stride-2 conv with padding 1 whose weight is the 3x3 one placed in the
// bottom-right corner (nn's GPU ops have no asymmetric pad); the tiny edge
// work (latent / scale before post_quant_conv, taking the mean half of the
// moments and scaling it) is done on the CPU, as the latents live there.
// It does not tile large images or sample the latent distribution.
package models

import (
	"errors"
	"fmt"
	"math"

	"github.com/sdbridge/sdbridge/nn"
)

// VAEDecoderCUDA runs a VAE's decoder (post_quant_conv + Decoder) on a GPU.
type VAEDecoderCUDA struct {
	V    *VAE
	g    *nn.GPU
	dw   *deviceWeights
	attn map[*VAEAttnBlock]*vaeAttnGPU
}

// NewVAEDecoderCUDA prepares v's decoder for g and uploads its weights.
func NewVAEDecoderCUDA(g *nn.GPU, v *VAE) (*VAEDecoderCUDA, error) {
	if g == nil || v == nil || v.Decoder == nil {
		return nil, errors.New("vae decoder (cuda): nil GPU or VAE")
	}
	var levels [][]*VAEAttnBlock
	for _, u := range v.Decoder.Up {
		levels = append(levels, u.Attns)
	}
	d := &VAEDecoderCUDA{V: v, g: g, dw: newDeviceWeights(g), attn: vaeAttnForms(v.Decoder.Mid, levels...)}
	ts := convWeights(v.PostQuantConv)
	ts = append(ts, vaeDecoderWeights(v.Decoder, d.attn)...)
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
	h := r.upload(z)                            // [B, embed, h, w]
	h = r.conv(h, d.V.PostQuantConv)            // [B, z, h, w]
	img := r.vaeDecoder(d.V.Decoder, d.attn, h) // [B, out, 8h, 8w]
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
	// down4 holds each Downsample's conv as the equivalent 4x4, pad-1
	// conv (see the file comment).
	down4 map[*VAEDownsample]*nn.Conv2d
	attn  map[*VAEAttnBlock]*vaeAttnGPU
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
	e := &VAEEncoderCUDA{V: v, g: g, dw: newDeviceWeights(g), down4: map[*VAEDownsample]*nn.Conv2d{}}
	var levels [][]*VAEAttnBlock
	for _, l := range v.Encoder.Down {
		if l.Downsample != nil {
			e.down4[l.Downsample] = padRightBottomConv(l.Downsample.Conv)
		}
		levels = append(levels, l.Attns)
	}
	e.attn = vaeAttnForms(v.Encoder.Mid, levels...)
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
				h = r.vaeAttn(d.Attns[j], e.attn[d.Attns[j]], h) // [B, C_lvl, H_lvl, W_lvl]
			}
		}
		if d.Downsample != nil {
			prev := h
			h = r.conv(h, e.down4[d.Downsample]) // [B, C_lvl, H_lvl/2, W_lvl/2]: F.pad(0,1,0,1) + 3x3 stride 2
			r.drop(prev)
		}
	}
	h = r.vaeMid(enc.Mid, e.attn, h)   // [B, C_last, H/f, W/f]
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
				ts = append(ts, vaeAttnWeights(d.Attns[j], e.attn)...)
			}
		}
		if d.Downsample != nil {
			ts = append(ts, convWeights(e.down4[d.Downsample])...)
		}
	}
	ts = append(ts, vaeMidWeights(enc.Mid, e.attn)...)
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
func (r *imageRun) vaeDecoder(d *VAEDecoder, attn map[*VAEAttnBlock]*vaeAttnGPU, z *nn.GPUTensor) *nn.GPUTensor {
	h := r.conv(z, d.ConvIn)     // [B, C_last, h, w]
	h = r.vaeMid(d.Mid, attn, h) // [B, C_last, h, w]
	for lvl := len(d.Up) - 1; lvl >= 0; lvl-- {
		u := &d.Up[lvl]
		for j, b := range u.Blocks {
			h = r.vaeResnet(b, h) // [B, C_lvl, h_lvl, w_lvl]
			if u.Attns != nil {
				h = r.vaeAttn(u.Attns[j], attn[u.Attns[j]], h) // [B, C_lvl, h_lvl, w_lvl]
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
func (r *imageRun) vaeMid(m *VAEMid, attn map[*VAEAttnBlock]*vaeAttnGPU, x *nn.GPUTensor) *nn.GPUTensor {
	h := r.vaeResnet(m.Block1, x)            // [B, C, h, w]
	h = r.vaeAttn(m.Attn1, attn[m.Attn1], h) // [B, C, h, w]
	return r.vaeResnet(m.Block2, h)
}

// vaeResnet follows VAEResnetBlock.Forward; the block's temporaries and its
// input (when it is one of r's temporaries) are freed on return.
func (r *imageRun) vaeResnet(b *VAEResnetBlock, x *nn.GPUTensor) *nn.GPUTensor {
	m := r.mark()
	h := r.groupNorm(x, b.Norm1, true) // [B, in, H, W]: silu(norm1(x))
	h = r.conv(h, b.Conv1)             // [B, out, H, W]
	r.groupNormInPlace(h, b.Norm2)     // [B, out, H, W]: silu(norm2(h)); dropout is identity
	h = r.conv(h, b.Conv2)             // [B, out, H, W]
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

// vaeAttnGPU holds an AttnBlock's projections in the forms the GPU path
// uses: q with the softmax scale C^-0.5 folded into its weight and bias
// (the scores then fit fp16 storage), v as a 1x1 conv (it yields v^T per
// batch item, the operand P v needs).
type vaeAttnGPU struct {
	q *nn.Linear // [C, C], scaled
	v *nn.Conv2d // [C, C, 1, 1]
}

func newVAEAttnGPU(a *VAEAttnBlock) *vaeAttnGPU {
	c := a.Q.Weight.Shape[0]
	s := float32(1 / math.Sqrt(float64(c)))
	q := &nn.Linear{Weight: a.Q.Weight.Clone()} // [C, C]
	nn.Scale(q.Weight, s)
	if a.Q.Bias != nil {
		q.Bias = a.Q.Bias.Clone() // [C]
		nn.Scale(q.Bias, s)
	}
	return &vaeAttnGPU{q: q, v: &nn.Conv2d{Weight: a.V.Weight.Reshape(c, c, 1, 1), Bias: a.V.Bias, Stride: 1}}
}

// vaeAttnForms builds the GPU forms of every AttnBlock of the mid block and
// the levels.
func vaeAttnForms(mid *VAEMid, levels ...[]*VAEAttnBlock) map[*VAEAttnBlock]*vaeAttnGPU {
	out := map[*VAEAttnBlock]*vaeAttnGPU{mid.Attn1: newVAEAttnGPU(mid.Attn1)}
	for _, l := range levels {
		for _, a := range l {
			out[a] = newVAEAttnGPU(a)
		}
	}
	return out
}

func (f *vaeAttnGPU) weights() []*nn.Tensor {
	return append(linearWeights(f.q), convWeights(f.v)...)
}

// vaeAttn follows VAEAttnBlock.Forward: one head of width C over the H*W
// positions, x + proj_out(softmax(q k^T C^-0.5) v). The head is wider than
// the flash kernels take (512 in SD), so per batch item the scores
// [HW, HW] are materialised, in fp32 whatever the storage dtype: q k^T and
// P v are plain GEMMs (Linear with k, then v^T, as the weight). Adds into
// x and returns it.
func (r *imageRun) vaeAttn(a *VAEAttnBlock, f *vaeAttnGPU, x *nn.GPUTensor) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	m := r.mark()
	b, c, hgt, wid := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	hw := hgt * wid
	h := r.groupNorm(x, a.Norm, false) // [B, C, H, W]
	if r.err != nil {
		return nil
	}
	q := r.keep(r.g.LinearChannelsFirst(h, r.w(f.q.Weight), r.w(f.q.Bias))) // [B, HW, C]: q * C^-0.5
	k := r.keep(r.g.LinearChannelsFirst(h, r.w(a.K.Weight), r.w(a.K.Bias))) // [B, HW, C]
	vt := r.conv(h, f.v)                                                    // [B, C, H, W]: v^T per batch item
	if r.err != nil {
		return nil
	}
	if q.DType != nn.GPUF32 {
		// fp16 storage: scores and probabilities in fp32 (fp16 logits of
		// a few tens lose ~1e-2 absolute, which the softmax keeps)
		q = r.keep(r.g.Cast(q, nn.GPUF32))   // [B, HW, C]
		k = r.keep(r.g.Cast(k, nn.GPUF32))   // [B, HW, C]
		vt = r.keep(r.g.Cast(vt, nn.GPUF32)) // [B, C, H, W]
	}
	o := r.keep(r.g.EmptyOf(nn.GPUF32, b, hw, c)) // [B, HW, C]
	p := r.keep(r.g.EmptyOf(nn.GPUF32, hw, hw))   // [HW, HW] scores of one batch item
	for n := 0; n < b && r.err == nil; n++ {
		qn := r.view(q, n*hw*c, hw, c)  // [HW, C]
		kn := r.view(k, n*hw*c, hw, c)  // [HW, C]
		vn := r.view(vt, n*c*hw, c, hw) // [C, HW]
		on := r.view(o, n*hw*c, hw, c)  // [HW, C]
		if r.err != nil {
			break
		}
		r.do(r.g.LinearInto(p, qn, kn, nil)) // [HW, HW]: q k^T C^-0.5
		if r.err == nil {
			r.do(r.g.SoftmaxRows(p, hw, 1)) // w_ = softmax(w_, dim=2)
		}
		if r.err == nil {
			r.do(r.g.LinearInto(on, p, vn, nil)) // [HW, C]: P v
		}
	}
	if r.err != nil {
		return nil
	}
	if o.DType != x.DType {
		o = r.keep(r.g.Cast(o, x.DType)) // [B, HW, C]
		if r.err != nil {
			return nil
		}
	}
	r.do(r.g.LinearToChannelsFirstAddInto(x, o, r.w(a.ProjOut.Weight), r.w(a.ProjOut.Bias))) // [B, C, H, W]: x + proj_out(h_)
	r.collect(m)
	return x
}

// view returns elements [off, off+numel(shape)) of t as a tensor of shape.
func (r *imageRun) view(t *nn.GPUTensor, off int, shape ...int) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	v, err := t.View(off, shape...)
	r.do(err)
	return v
}

// groupNormInPlace is silu(norm(x)) written over x.
func (r *imageRun) groupNormInPlace(x *nn.GPUTensor, n *nn.GroupNorm) {
	if r.err != nil {
		return
	}
	r.do(r.g.GroupNormInto(x, x, r.w(n.Weight), r.w(n.Bias), n.Groups, n.Eps, true))
}

// padRightBottomConv returns the 4x4, stride-2, padding-1 conv equal to
// c (3x3, stride 2, no padding) applied after one zero row and column are
// appended at the bottom and right: out[i, j] = sum w[a, b] xp[2i+a, 2j+b]
// = sum w4[a+1, b+1] x[2i+(a+1)-1, 2j+(b+1)-1], with w4's first row and
// column zero (they meet the top/left padding only).
func padRightBottomConv(c *nn.Conv2d) *nn.Conv2d {
	oc, ic := c.Weight.Shape[0], c.Weight.Shape[1]
	w4 := nn.New(oc, ic, 4, 4) // [out, in, 4, 4]
	for p := 0; p < oc*ic; p++ {
		for a := 0; a < 3; a++ {
			copy(w4.Data[p*16+(a+1)*4+1:p*16+(a+1)*4+4], c.Weight.Data[p*9+a*3:p*9+a*3+3])
		}
	}
	return &nn.Conv2d{Weight: w4, Bias: c.Bias, Stride: 2, Padding: 1}
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

// vaeAttnWeights lists the weights the GPU path uploads for a (its own
// forms of q and v, the stored k and proj_out).
func vaeAttnWeights(a *VAEAttnBlock, forms map[*VAEAttnBlock]*vaeAttnGPU) []*nn.Tensor {
	ts := groupNormWeights(a.Norm)
	ts = append(ts, forms[a].weights()...)
	ts = append(ts, linearWeights(a.K)...)
	return append(ts, linearWeights(a.ProjOut)...)
}

func vaeMidWeights(m *VAEMid, forms map[*VAEAttnBlock]*vaeAttnGPU) []*nn.Tensor {
	ts := vaeResnetWeights(m.Block1)
	ts = append(ts, vaeAttnWeights(m.Attn1, forms)...)
	return append(ts, vaeResnetWeights(m.Block2)...)
}

func vaeDecoderWeights(d *VAEDecoder, forms map[*VAEAttnBlock]*vaeAttnGPU) []*nn.Tensor {
	ts := convWeights(d.ConvIn)
	ts = append(ts, vaeMidWeights(d.Mid, forms)...)
	for lvl := len(d.Up) - 1; lvl >= 0; lvl-- {
		u := &d.Up[lvl]
		for j, b := range u.Blocks {
			ts = append(ts, vaeResnetWeights(b)...)
			if u.Attns != nil {
				ts = append(ts, vaeAttnWeights(u.Attns[j], forms)...)
			}
		}
		if u.Upsample != nil {
			ts = append(ts, convWeights(u.Upsample.Conv)...)
		}
	}
	ts = append(ts, groupNormWeights(d.NormOut)...)
	return append(ts, convWeights(d.ConvOut)...)
}
