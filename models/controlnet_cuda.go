// controlnet_cuda.go: the SD 1.x ControlNet on a CUDA GPU. ControlNetCUDA
// wraps a bound *ControlNet (same weight structs, uploaded once) and runs
// HintEncode / ForwardEncoded as the CPU methods do, with CPU tensors at
// the edges, plus device-tensor variants (HintEncodeGPU, ForwardEncodedGPU)
// that can write the 13 residuals straight into device buffers the caller
// owns (the host's residual arena).
//
// Like the CPU type it applies no strength, soft weights or start/end: the
// residuals are raw zero-conv outputs.
package models

import (
	"fmt"
	"slices"

	"github.com/sdbridge/sdbridge/nn"
)

// ControlNetCUDA runs a bound ControlNet on a GPU.
type ControlNetCUDA struct {
	C  *ControlNet
	g  *nn.GPU
	dw *deviceWeights
	fa *fusedAttn // fused attention projections
}

// NewControlNetCUDA prepares c for g and uploads its weights. Close frees
// them; c stays usable on the CPU.
func NewControlNetCUDA(g *nn.GPU, c *ControlNet) (*ControlNetCUDA, error) {
	if g == nil || c == nil {
		return nil, fmt.Errorf("controlnet (cuda): nil GPU or ControlNet")
	}
	n := &ControlNetCUDA{C: c, g: g, dw: newDeviceWeights(g)}
	var err error
	if n.fa, err = fuseAttention(n.dw, append(slices.Clone(c.InputBlocks), c.MiddleBlock)...); err != nil {
		n.Close()
		return nil, fmt.Errorf("controlnet (cuda): %w", err)
	}
	if err := uploadAll(n.dw, controlNetWeights(c)); err != nil {
		n.Close()
		return nil, fmt.Errorf("controlnet (cuda): uploading weights: %w", err)
	}
	return n, nil
}

// HintEncode runs the hint encoder on the GPU: hint [B, 3, 8h, 8w] to
// [B, mc, h, w] on the CPU (as ControlNet.HintEncode).
func (n *ControlNetCUDA) HintEncode(hint *nn.Tensor) (*nn.Tensor, error) {
	if err := n.checkHint(shapeOf(hint)); err != nil {
		return nil, err
	}
	r := n.newRun()
	defer r.release()
	g := n.hint(r, r.upload(hint)) // [B, mc, h, w]
	if r.err != nil {
		return nil, fmt.Errorf("controlnet (cuda): hint: %w", r.err)
	}
	out, err := g.Download()
	if err != nil {
		return nil, fmt.Errorf("controlnet (cuda): downloading the encoded hint: %w", err)
	}
	return out, nil
}

// HintEncodeGPU is HintEncode on device tensors; the result is a new
// tensor [B, mc, h, w] the caller frees (encode once, reuse every step).
func (n *ControlNetCUDA) HintEncodeGPU(hint *nn.GPUTensor) (*nn.GPUTensor, error) {
	var s []int
	if hint != nil {
		s = hint.Shape
	}
	if err := n.checkHint(s); err != nil {
		return nil, err
	}
	r := n.newRun()
	defer r.release()
	g := n.hint(r, hint) // [B, mc, h, w]
	if r.err != nil {
		return nil, fmt.Errorf("controlnet (cuda): hint: %w", r.err)
	}
	r.forget(g)
	return g, nil
}

// checkHint is ControlNet.HintEncode's input check on a shape.
func (n *ControlNetCUDA) checkHint(s []int) error {
	hc := n.C.Hint.HintChannels()
	if len(s) != 4 || s[1] != hc {
		return fmt.Errorf("controlnet: hint has shape %v, want [B, %d, H, W]", s, hc)
	}
	if s[2]%8 != 0 || s[3]%8 != 0 {
		return fmt.Errorf("controlnet: hint is %dx%d, want a multiple of 8 (8x the latent size)", s[2], s[3])
	}
	return nil
}

// hint follows HintBlock.Forward: [B, 3, 8h, 8w] -> [B, mc, h, w].
func (n *ControlNetCUDA) hint(r *imageRun, hint *nn.GPUTensor) *nn.GPUTensor {
	g := hint // [B, 3, 8h, 8w]
	for k, c := range n.C.Hint.Convs {
		prev := g
		g = r.conv(g, c) // [B, C_k, 8h/s_k, 8w/s_k]
		if k < len(n.C.Hint.Convs)-1 {
			r.silu(g)
		}
		r.drop(prev)
	}
	return g // [B, mc, h, w]
}

// Forward returns the residuals for x [B, 4, h, w] at timesteps [B] under
// ctx [B, L, D] with hint [B or 1, 3, 8h, 8w], encoding the hint on every
// call (as ControlNet.Forward).
func (n *ControlNetCUDA) Forward(x, hint *nn.Tensor, timesteps []float32, ctx *nn.Tensor) (Residuals, error) {
	g, err := n.HintEncode(hint)
	if err != nil {
		return nil, err
	}
	return n.ForwardEncoded(x, g, timesteps, ctx)
}

// ForwardEncoded returns the 13 residuals (CPU tensors) for x given the
// encoded hint guided [B or 1, mc, h, w], as ControlNet.ForwardEncoded.
func (n *ControlNetCUDA) ForwardEncoded(x, guided *nn.Tensor, timesteps []float32, ctx *nn.Tensor) (Residuals, error) {
	if err := n.checkInputs(shapeOf(x), shapeOf(guided), timesteps, shapeOf(ctx)); err != nil {
		return nil, err
	}
	r := n.newRun()
	defer r.release()
	res := n.forward(r, r.upload(x), r.upload(guided), timesteps, r.upload(ctx), nil)
	if r.err != nil {
		return nil, fmt.Errorf("controlnet (cuda): %w", r.err)
	}
	out := make(Residuals, len(res))
	for name, t := range res {
		c, err := t.Download()
		if err != nil {
			return nil, fmt.Errorf("controlnet (cuda): downloading residual %q: %w", name, err)
		}
		out[name] = c
	}
	return out, nil
}

// ForwardEncodedGPU is ForwardEncoded on device tensors. A residual whose
// name is in dst is written into that buffer (its shape must be the
// residual's, ResidualShapes); the others are new tensors the caller frees.
// It returns every residual by name (dst's buffers included).
func (n *ControlNetCUDA) ForwardEncodedGPU(x, guided *nn.GPUTensor, timesteps []float32, ctx *nn.GPUTensor, dst GPUResiduals) (GPUResiduals, error) {
	if err := n.checkInputs(gpuShape(x), gpuShape(guided), timesteps, gpuShape(ctx)); err != nil {
		return nil, err
	}
	if err := dst.names().checkNames(n.C.Config); err != nil {
		return nil, fmt.Errorf("controlnet: destination %w", err)
	}
	r := n.newRun()
	defer r.release()
	res := n.forward(r, x, guided, timesteps, ctx, dst)
	if r.err != nil {
		return nil, fmt.Errorf("controlnet (cuda): %w", r.err)
	}
	for name, t := range res {
		if dst[name] != t {
			r.forget(t)
		}
	}
	return res, nil
}

// checkInputs is ControlNet.ForwardEncoded's input check on shapes.
func (n *ControlNetCUDA) checkInputs(x, guided []int, timesteps []float32, ctx []int) error {
	if err := checkConditioning("controlnet", n.C.Config, &nn.Tensor{Shape: x}, timesteps, &nn.Tensor{Shape: ctx}); err != nil {
		return err
	}
	b, mc := x[0], n.C.Config.ModelChannels
	want := []int{b, mc, x[2], x[3]}
	if len(guided) != 4 || !slices.Equal(guided[1:], want[1:]) || (guided[0] != b && guided[0] != 1) {
		return fmt.Errorf("controlnet: encoded hint has shape %v, want %v: the hint image must be exactly 8x the latent (%dx%d px)",
			guided, want, 8*x[2], 8*x[3])
	}
	return nil
}

// forward follows ControlNet.ForwardEncoded after its checks. Residuals
// named in dst are written there; the others are r's temporaries.
func (n *ControlNetCUDA) forward(r *imageRun, x, guided *nn.GPUTensor, timesteps []float32, ctx *nn.GPUTensor, dst GPUResiduals) GPUResiduals {
	c := n.C
	if r.err != nil {
		return nil
	}

	emb := r.timeEmbed(c.TimeEmbed, timesteps) // [B, 4mc], silu applied
	res := make(GPUResiduals, len(c.InputBlocks)+1)
	h := x // [B, 4, h, w]
	for i, blk := range c.InputBlocks {
		prev := h
		h = r.block(blk, h, emb, ctx, 0, 0) // [B, C_i, H_i, W_i]
		if i == 0 {
			// h = module(h, emb, context); h += guided_hint; guided_hint = None
			// (guided [1 or B, mc, h, w]: one hint for the whole batch is broadcast)
			if r.err == nil {
				r.do(r.g.AddBroadcastInPlace(h, guided)) // [B, mc, h, w]
			}
		}
		if i > 0 {
			r.drop(prev)
		}
		res[InputBlockResidual(i)] = r.zeroConv(c.ZeroConvs[i], h, dst[InputBlockResidual(i)]) // [B, C_i, H_i, W_i]
	}
	prev := h
	h = r.block(c.MiddleBlock, h, emb, ctx, 0, 0) // [B, C_mid, h/8, w/8]
	r.drop(prev)
	res[MiddleBlockResidual] = r.zeroConv(c.MiddleOut, h, dst[MiddleBlockResidual]) // [B, C_mid, h/8, w/8]
	return res
}

// zeroConv applies a 1x1 conv to h, into y when y is not nil.
func (r *imageRun) zeroConv(c *nn.Conv2d, h, y *nn.GPUTensor) *nn.GPUTensor {
	if y == nil {
		return r.conv(h, c)
	}
	if r.err != nil {
		return nil
	}
	want := []int{h.Shape[0], c.Weight.Shape[0], h.Shape[2], h.Shape[3]}
	if !slices.Equal(y.Shape, want) {
		r.do(fmt.Errorf("destination residual has shape %v, want %v", y.Shape, want))
		return nil
	}
	r.do(r.g.Conv2dInto(y, nil, h, r.w(c.Weight), r.w(c.Bias), c.Stride, c.Padding))
	return y
}

func gpuShape(t *nn.GPUTensor) []int {
	if t == nil {
		return nil
	}
	return t.Shape
}

// controlNetWeights lists every weight tensor of c in forward order.
func controlNetWeights(c *ControlNet) []*nn.Tensor {
	ts := timeEmbedWeights(c.TimeEmbed)
	for _, cv := range c.Hint.Convs {
		ts = append(ts, convWeights(cv)...)
	}
	for _, b := range c.InputBlocks {
		ts = append(ts, blockWeights(b)...)
	}
	for _, z := range c.ZeroConvs {
		ts = append(ts, convWeights(z)...)
	}
	ts = append(ts, blockWeights(c.MiddleBlock)...)
	return append(ts, convWeights(c.MiddleOut)...)
}

// Sync rewrites the device copies of ts (ControlNet weights patched on
// the CPU) in place; other tensors are ignored.
func (n *ControlNetCUDA) Sync(ts []*nn.Tensor) error {
	if err := n.dw.Sync(ts); err != nil {
		return fmt.Errorf("controlnet (cuda): sync: %w", err)
	}
	return nil
}

// Close frees the device copies of the weights.
func (n *ControlNetCUDA) Close() error {
	if n == nil || n.dw == nil {
		return nil
	}
	err := n.dw.Close()
	if cerr := n.fa.close(); err == nil {
		err = cerr
	}
	return err
}

// newRun starts a forward's op composer with the fused attention weights.
func (n *ControlNetCUDA) newRun() *imageRun {
	r := newImageRun(n.dw)
	r.fa = n.fa
	return r
}
