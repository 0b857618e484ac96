// unet_cuda.go: the SD 1.x U-Net on a CUDA GPU. UNetCUDA wraps a bound
// *UNet (the same weight structs; each weight is uploaded once, in the
// GPU's activation dtype) and runs UNet.Forward's walk with nn's GPU ops:
// Forward takes and returns CPU tensors (host.EpsModel), ForwardGPU works
// on device tensors (plugins sharing device arenas, graph capture), with
// ControlNet residuals named as in Residuals.
//
// Attention projections are uploaded fused (unet_attn_cuda.go); CUDA graph
// replay is an option (unet_cuda_graph.go). It does not change the CPU
// U-Net and does not patch weights itself (Sync rewrites tensors patched
// on the CPU, a LoRA for example, in place).
package models

import (
	"fmt"
	"slices"

	"github.com/sdbridge/sdbridge/nn"
)

// GPUResiduals are Residuals in device memory: names as ResidualNames,
// tensors [B, C, H, W] shaped like the activation they are added to, in
// the GPU's activation dtype. A missing name adds nothing.
type GPUResiduals map[string]*nn.GPUTensor

// names returns the residual names as a CPU Residuals key set (for the
// shared name check).
func (r GPUResiduals) names() Residuals {
	out := make(Residuals, len(r))
	for name := range r {
		out[name] = nil
	}
	return out
}

// UNetCUDA runs a bound U-Net on a GPU. It is not safe for concurrent use
// (nor is the GPU it runs on).
type UNetCUDA struct {
	U *UNet
	// Graphs replays each input shape's forward as a captured CUDA graph
	// (unet_cuda_graph.go). Off by default: not yet checked on a GPU.
	Graphs bool

	g      *nn.GPU
	dw     *deviceWeights
	fa     *fusedAttn            // fused attention projections
	graphs map[string]*unetGraph // by graphKey
}

// NewUNetCUDA prepares u for g and uploads its weights (an error names the
// failing allocation). Close frees them; u stays usable on the CPU.
func NewUNetCUDA(g *nn.GPU, u *UNet) (*UNetCUDA, error) {
	if g == nil || u == nil {
		return nil, fmt.Errorf("unet (cuda): nil GPU or U-Net")
	}
	c := &UNetCUDA{U: u, g: g, dw: newDeviceWeights(g)}
	blocks := append(append(slices.Clone(u.InputBlocks), u.MiddleBlock), u.OutputBlocks...)
	var err error
	if c.fa, err = fuseAttention(c.dw, blocks...); err != nil {
		c.Close()
		return nil, fmt.Errorf("unet (cuda): %w", err)
	}
	if err := uploadAll(c.dw, unetWeights(u)); err != nil {
		c.Close()
		return nil, fmt.Errorf("unet (cuda): uploading weights: %w", err)
	}
	return c, nil
}

// Forward predicts the noise for x [B, in, H, W] at timesteps [B] under
// ctx [B, L, ContextDim] with optional residuals, as UNet.Forward (CPU
// tensors in and out; everything in between runs on the GPU). Returns
// [B, out, H, W].
func (c *UNetCUDA) Forward(x *nn.Tensor, timesteps []float32, ctx *nn.Tensor, res Residuals) (*nn.Tensor, error) {
	if err := checkConditioning("unet", c.U.Config, x, timesteps, ctx); err != nil {
		return nil, err
	}
	if err := res.checkNames(c.U.Config); err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	shapes := map[string][]int{}
	for name, t := range res {
		shapes[name] = shapeOf(t)
	}
	if err := checkResidualShapes(c.U.Config, x.Shape, shapes); err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	r := c.newRun()
	defer r.release()
	dx := r.upload(x)     // [B, in, H, W]
	dctx := r.upload(ctx) // [B, L, D]
	dres := make(GPUResiduals, len(res))
	for name, t := range res {
		if t != nil {
			dres[name] = r.upload(t) // [B, C_i, H_i, W_i]
		}
	}
	if r.err != nil {
		return nil, fmt.Errorf("unet (cuda): %w", r.err)
	}
	var y *nn.GPUTensor // [B, out, H, W]
	if c.Graphs {
		var err error
		if y, err = c.runGraph(dx, timesteps, dctx, dres); err != nil {
			return nil, fmt.Errorf("unet (cuda): %w", err)
		}
	} else if y = c.forward(r, dx, timesteps, dctx, dres); r.err != nil {
		return nil, fmt.Errorf("unet (cuda): %w", r.err)
	}
	out, err := y.Download()
	if err != nil {
		return nil, fmt.Errorf("unet (cuda): downloading eps: %w", err)
	}
	return out, nil
}

// ForwardGPU is Forward on device tensors: x [B, in, H, W] and ctx
// [B, L, D] in the GPU's dtype, residuals as GPUResiduals. The inputs are
// not modified; the result is a new tensor [B, out, H, W] the caller frees.
func (c *UNetCUDA) ForwardGPU(x *nn.GPUTensor, timesteps []float32, ctx *nn.GPUTensor, res GPUResiduals) (*nn.GPUTensor, error) {
	if err := checkConditioning("unet", c.U.Config, shapeOnly(x), timesteps, shapeOnly(ctx)); err != nil {
		return nil, err
	}
	if err := res.names().checkNames(c.U.Config); err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	shapes := map[string][]int{}
	for name, t := range res {
		shapes[name] = gpuShape(t)
	}
	if err := checkResidualShapes(c.U.Config, x.Shape, shapes); err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	if c.Graphs {
		y, err := c.runGraph(x, timesteps, ctx, res) // [B, out, H, W], the graph's
		if err != nil {
			return nil, fmt.Errorf("unet (cuda): %w", err)
		}
		out, err := c.g.Empty(y.Shape...) // [B, out, H, W]
		if err != nil {
			return nil, fmt.Errorf("unet (cuda): %w", err)
		}
		if err := out.Buf.CopyFromAsync(y.Buf, y.Bytes()); err != nil {
			out.Free()
			return nil, fmt.Errorf("unet (cuda): copying the graph's output: %w", err)
		}
		return out, nil
	}
	r := c.newRun()
	defer r.release()
	y := c.forward(r, x, timesteps, ctx, res) // [B, out, H, W]
	if r.err != nil {
		return nil, fmt.Errorf("unet (cuda): %w", r.err)
	}
	r.forget(y)
	return y, nil
}

// forward follows UNet.Forward on the GPU. Inputs are not modified; the
// result is one of r's temporaries.
func (c *UNetCUDA) forward(r *imageRun, x *nn.GPUTensor, timesteps []float32, ctx *nn.GPUTensor, res GPUResiduals) *nn.GPUTensor {
	s := r.upload(sinusoid(c.U.TimeEmbed, timesteps)) // [B, mc]
	return c.forwardFrom(r, x, s, ctx, res)
}

// forwardFrom is forward given the uploaded timestep sinusoid s [B, mc]
// (a graph captures it: every input is then a device tensor).
func (c *UNetCUDA) forwardFrom(r *imageRun, x, s, ctx *nn.GPUTensor, res GPUResiduals) *nn.GPUTensor {
	u := c.U
	emb := r.timeEmbedFrom(u.TimeEmbed, s) // [B, 4mc], silu applied

	h := x                                                // [B, in, H, W]
	skips := make([]*nn.GPUTensor, 0, len(u.InputBlocks)) // hs
	for _, blk := range u.InputBlocks {
		h = r.block(blk, h, emb, ctx, 0, 0) // [B, C_i, H_i, W_i]
		skips = append(skips, h)
	}
	h = r.block(u.MiddleBlock, h, emb, ctx, 0, 0) // [B, C_mid, ceil(H/8), ceil(W/8)]
	r.addResidual(res, MiddleBlockResidual, h)    // h += control.pop()
	for k, blk := range u.OutputBlocks {
		if r.err != nil {
			return nil
		}
		i := len(skips) - 1 - k
		// skip = hs.pop() + control.pop(): the skip is used once, so in place
		r.addResidual(res, InputBlockResidual(i), skips[i]) // [B, C_i, H_i, W_i]
		m := r.mark()
		cat := r.keep(r.g.ConcatChannels(h, skips[i])) // [B, C + C_i, H_i, W_i]: th.cat([h, hs.pop()], dim=1)
		// output_shape = hs[-1].shape: an upsampler resizes to the next skip
		th, tw := 0, 0
		if i > 0 {
			th, tw = skips[i-1].Shape[2], skips[i-1].Shape[3]
		}
		prev := h
		h = r.block(blk, cat, emb, ctx, th, tw) // [B, C_k, H_k, W_k]
		r.collect(m, h)
		r.drop(prev)
		r.drop(skips[i])
	}
	h = r.groupNorm(h, u.OutNorm, true) // [B, mc, H, W]: silu(out.0(h))
	return r.conv(h, u.OutConv)         // [B, out, H, W]
}

// addResidual adds res[name] to base in place (nothing when absent); a
// shape mismatch is an error naming the residual.
func (r *imageRun) addResidual(res GPUResiduals, name string, base *nn.GPUTensor) {
	t, ok := res[name]
	if !ok || t == nil || r.err != nil {
		return
	}
	if !slices.Equal(t.Shape, base.Shape) {
		r.do(fmt.Errorf("residual %q has shape %v, the U-Net activation is %v", name, t.Shape, base.Shape))
		return
	}
	r.addInPlace(base, t) // [B, C, H, W]
}

// newRun starts a forward's op composer with the fused attention weights.
func (c *UNetCUDA) newRun() *imageRun {
	r := newImageRun(c.dw)
	r.fa = c.fa
	return r
}

// checkResidualShapes refuses, before any work, a residual (by name; nil
// shapes are absent residuals) that does not have the shape of the
// activation it is added to for the input x [B, in, H, W].
func checkResidualShapes(cfg UNetConfig, x []int, shapes map[string][]int) error {
	want := ResidualShapes(cfg, x[0], x[2], x[3])
	for name, s := range shapes {
		if s != nil && !slices.Equal(s, want[name]) {
			return fmt.Errorf("residual %q has shape %v, the U-Net activation is %v", name, s, want[name])
		}
	}
	return nil
}

// drop frees t now when it is one of r's temporaries (an input of the
// forward is left alone).
func (r *imageRun) drop(t *nn.GPUTensor) {
	if t == nil {
		return
	}
	if i := slices.Index(r.tmp, t); i >= 0 {
		r.tmp = slices.Delete(r.tmp, i, i+1)
		r.do(t.Free())
	}
}

// Sync rewrites the device copies of ts (U-Net weights patched on the
// CPU, a LoRA for example) in place; tensors that are not this U-Net's
// weights are ignored. Addresses stay, so captured graphs (and device
// views handed out by DeviceWeight) remain valid.
func (c *UNetCUDA) Sync(ts []*nn.Tensor) error {
	if err := c.dw.Sync(ts); err != nil {
		return fmt.Errorf("unet (cuda): sync: %w", err)
	}
	return nil
}

// DeviceWeight returns the device copy of t, one of the U-Net's weight
// tensors (nil for any other tensor): what a patcher updates in place on
// the GPU (a LoRA applied on the device) instead of calling Sync.
func (c *UNetCUDA) DeviceWeight(t *nn.Tensor) *nn.GPUTensor { return c.dw.m[t] }

// Close frees the graphs and the device copies of the weights.
func (c *UNetCUDA) Close() error {
	if c == nil || c.dw == nil {
		return nil
	}
	err := c.closeGraphs()
	if cerr := c.dw.Close(); err == nil {
		err = cerr
	}
	if cerr := c.fa.close(); err == nil {
		err = cerr
	}
	return err
}

// shapeOnly wraps a device tensor's shape for the shape checks shared with
// the CPU path (they read Shape only).
func shapeOnly(t *nn.GPUTensor) *nn.Tensor {
	if t == nil {
		return nil
	}
	return &nn.Tensor{Shape: t.Shape}
}

// unetWeights lists every weight tensor of u (with duplicates removed by
// deviceWeights), in forward order.
func unetWeights(u *UNet) []*nn.Tensor {
	var ts []*nn.Tensor
	ts = append(ts, timeEmbedWeights(u.TimeEmbed)...)
	for _, b := range u.InputBlocks {
		ts = append(ts, blockWeights(b)...)
	}
	ts = append(ts, blockWeights(u.MiddleBlock)...)
	for _, b := range u.OutputBlocks {
		ts = append(ts, blockWeights(b)...)
	}
	ts = append(ts, u.OutNorm.Weight, u.OutNorm.Bias)
	return append(ts, convWeights(u.OutConv)...)
}
