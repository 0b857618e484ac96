// clip_cuda.go is the CLIP text encoder on a CUDA GPU: CLIPCUDA runs a
// CLIPTextModel's weights (uploaded once, in the GPU's dtype) through the
// same layers as clip.go / clip_layer.go, line for line, with CPU token
// ids in and a CPU tensor out (Encode, EncodeSkip), or the device tensor
// (EncodeSkipGPU). The causal mask is the attention kernel's flag, not a
// bias tensor. It does not tokenize, and does not keep the CPU model in
// step with patches: call Sync after patching CPU weights (a LoRA), or
// patch the device copies in place (DeviceWeight).
package models

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// CLIPCUDA is a CLIPTextModel whose forward runs on a GPU.
type CLIPCUDA struct {
	m    *CLIPTextModel
	dw   *deviceWeights
	acts []nn.TextAct // per layer, the activation its MLP holds
}

// NewCLIPCUDA uploads m's weights to g and returns the GPU encoder; m
// stays usable on the CPU (it supplies the configuration and, for Sync,
// the patched tensors).
func NewCLIPCUDA(g *nn.GPU, m *CLIPTextModel) (*CLIPCUDA, error) {
	c := &CLIPCUDA{m: m, dw: newDeviceWeights(g)}
	for i, l := range m.Layers {
		act, err := textActOf(l.MLP.ActName)
		if err != nil {
			return nil, fmt.Errorf("clip cuda: layer %d mlp: %w", i, err)
		}
		c.acts = append(c.acts, act)
	}
	for _, t := range clipWeights(m) {
		if _, err := c.dw.get(t); err != nil {
			c.dw.Close()
			return nil, fmt.Errorf("clip cuda: upload weights: %w", err)
		}
	}
	return c, nil
}

// Encode is CLIPTextModel.Encode on the GPU: [B, L, C] for ids [B][L].
func (c *CLIPCUDA) Encode(ids [][]int) (*nn.Tensor, error) {
	return c.EncodeSkip(ids, 1)
}

// EncodeSkip is CLIPTextModel.EncodeSkip on the GPU (clip skip).
func (c *CLIPCUDA) EncodeSkip(ids [][]int, skip int) (*nn.Tensor, error) {
	y, err := c.EncodeSkipGPU(ids, skip) // [B, L, C]
	if err != nil {
		return nil, err
	}
	defer y.Free()
	out, err := y.Download() // [B, L, C]
	if err != nil {
		return nil, fmt.Errorf("clip cuda: download: %w", err)
	}
	return out, nil
}

// EncodeSkipGPU is EncodeSkip returning the device tensor [B, L, C] in
// the GPU's dtype (the caller frees it).
func (c *CLIPCUDA) EncodeSkipGPU(ids [][]int, skip int) (*nn.GPUTensor, error) {
	m := c.m
	if skip == 0 {
		skip = 1
	}
	if skip < 1 || skip > m.Config.Layers {
		return nil, fmt.Errorf("clip: clip skip %d out of range 1..%d", skip, m.Config.Layers)
	}
	if err := clipCheckIDs(&m.Config, ids); err != nil {
		return nil, err
	}
	r := newTextRun(c.dw)
	defer r.release()
	x := r.embed(m.TokenEmbedding, ids, m.PositionEmbedding) // [B, L, C]
	for i, l := range m.Layers[:m.Config.Layers-skip+1] {
		x = c.layer(r, l, c.acts[i], x) // [B, L, C]
		r.retain(x)
	}
	y := r.layerNorm(x, m.FinalLayerNorm) // [B, L, C]
	if r.err != nil {
		return nil, fmt.Errorf("clip cuda: %w", r.err)
	}
	r.forget(y)
	return y, nil
}

// layer is CLIPEncoderLayer.Forward: x [B, L, C] to [B, L, C].
func (c *CLIPCUDA) layer(r *textRun, l *CLIPEncoderLayer, act nn.TextAct, x *nn.GPUTensor) *nn.GPUTensor {
	h := r.layerNorm(x, l.LayerNorm1) // [B, L, C]
	h = c.attention(r, l.SelfAttn, h) // [B, L, C]
	r.addInPlace(h, x)                // [B, L, C]: residual + attn
	x = h                             // [B, L, C]
	h = r.layerNorm(x, l.LayerNorm2)  // [B, L, C]
	h = r.linear(h, l.MLP.FC1)        // [B, L, I]
	r.activate(h, act)                // [B, L, I]
	h = r.linear(h, l.MLP.FC2)        // [B, L, C]
	r.addInPlace(h, x)                // [B, L, C]: residual + mlp
	return h
}

// attention is CLIPAttention.Forward: causal, default scale.
func (c *CLIPCUDA) attention(r *textRun, a *CLIPAttention, x *nn.GPUTensor) *nn.GPUTensor {
	q := r.linear(x, a.QProj)                                             // [B, L, C]
	k := r.linear(x, a.KProj)                                             // [B, L, C]
	v := r.linear(x, a.VProj)                                             // [B, L, C]
	o := r.attention(q, k, v, a.Heads, nn.GPUAttentionOpts{Causal: true}) // [B, L, C]
	return r.linear(o, a.OutProj)                                         // [B, L, C]
}

// Sync re-uploads the device copies of ts (CPU weights patched since).
func (c *CLIPCUDA) Sync(ts []*nn.Tensor) error { return c.dw.Sync(ts) }

// DeviceWeight returns the device copy of t, one of the encoder's weight
// tensors (nil for any other tensor): what a patcher updates in place on
// the GPU (a LoRA applied on the device) instead of calling Sync.
func (c *CLIPCUDA) DeviceWeight(t *nn.Tensor) *nn.GPUTensor { return c.dw.m[t] }

// Close frees the device weights.
func (c *CLIPCUDA) Close() error { return c.dw.Close() }

// clipCheckIDs refuses what CLIPTextModel.Embed refuses, with its words.
func clipCheckIDs(cfg *CLIPTextConfig, ids [][]int) error {
	if len(ids) == 0 {
		return fmt.Errorf("clip: no token sequences")
	}
	l := len(ids[0])
	if l < 1 || l > cfg.MaxPositions {
		return fmt.Errorf("clip: sequence length %d out of range 1..%d", l, cfg.MaxPositions)
	}
	for n, row := range ids {
		if len(row) != l {
			return fmt.Errorf("clip: sequence %d has %d tokens, sequence 0 has %d", n, len(row), l)
		}
		for i, id := range row {
			if id < 0 || id >= cfg.Vocab {
				return fmt.Errorf("clip: token id %d at [%d][%d] outside the vocabulary (%d)", id, n, i, cfg.Vocab)
			}
		}
	}
	return nil
}

// clipWeights lists every tensor the forward reads.
func clipWeights(m *CLIPTextModel) []*nn.Tensor {
	ts := []*nn.Tensor{m.TokenEmbedding, m.PositionEmbedding, m.FinalLayerNorm.Weight, m.FinalLayerNorm.Bias}
	for _, l := range m.Layers {
		a := l.SelfAttn
		for _, lin := range []*nn.Linear{a.QProj, a.KProj, a.VProj, a.OutProj, l.MLP.FC1, l.MLP.FC2} {
			ts = append(ts, lin.Weight, lin.Bias)
		}
		ts = append(ts, l.LayerNorm1.Weight, l.LayerNorm1.Bias, l.LayerNorm2.Weight, l.LayerNorm2.Bias)
	}
	return ts
}
