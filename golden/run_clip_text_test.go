// run_clip_text_test.go runs "clip_text" cases: the checkpoint's CLIP text
// encoder on given ids, last layer and clip skip 2, both after
// final_layer_norm. Heads and activation come from the case config, which
// must agree with what LoadCLIPText infers by default. On a GPU the encoder
// runs as models.CLIPCUDA.
package golden

import (
	"fmt"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// runCLIPText runs a "clip_text" case on the CPU.
func runCLIPText(c *Case) (Result, error) { return clipTextCase(c, nil) }

// runCLIPTextGPU runs a "clip_text" case on d's GPU.
func runCLIPTextGPU(c *Case, d *host.Device) (Result, []string, error) {
	res, err := clipTextCase(c, d)
	return res, nil, err
}

// clipEncoder is the CLIP text model a case runs: *models.CLIPTextModel
// or its CUDA twin.
type clipEncoder interface {
	Encode(ids [][]int) (*nn.Tensor, error)
	EncodeSkip(ids [][]int, skip int) (*nn.Tensor, error)
}

// clipTextCase runs a "clip_text" case on d (nil: the CPU).
func clipTextCase(c *Case, d *host.Device) (_ Result, err error) {
	path, err := c.File("checkpoint")
	if err != nil {
		return nil, err
	}
	var cfg struct {
		Heads int     `json:"num_attention_heads"`
		Act   string  `json:"hidden_act"`
		Eps   float32 `json:"layer_norm_eps"`
	}
	if err := c.ConfigInto("clip", &cfg); err != nil {
		return nil, err
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Load with the defaults (heads = hidden/64, quick_gelu, 1e-5), then
	// check they are what the reference used: real files carry no config.
	cpu, err := models.LoadCLIPText(models.NewWeights(f), models.CLIPTextOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var m clipEncoder = cpu
	if d.OnGPU() {
		g, gerr := models.NewCLIPCUDA(d.GPU, cpu)
		if gerr != nil {
			return nil, gerr
		}
		defer closeGPU(g.Close, &err)
		m = g
	}
	if mc := cpu.Config; mc.Heads != cfg.Heads || mc.HiddenAct != cfg.Act || mc.LayerNormEps != cfg.Eps {
		return nil, fmt.Errorf("inferred heads %d, act %s, eps %g; reference %d, %s, %g",
			mc.Heads, mc.HiddenAct, mc.LayerNormEps, cfg.Heads, cfg.Act, cfg.Eps)
	}
	raw, shape, err := c.InputInts("in.ids")
	if err != nil {
		return nil, err
	}
	if len(shape) != 2 {
		return nil, fmt.Errorf("in.ids has shape %v, want [B, L]", shape)
	}
	ids := make([][]int, shape[0])
	for b := range ids {
		ids[b] = make([]int, shape[1])
		for i := range ids[b] {
			ids[b][i] = int(raw[b*shape[1]+i])
		}
	}
	last, err := m.Encode(ids) // [B, L, C]
	if err != nil {
		return nil, err
	}
	pen, err := m.EncodeSkip(ids, 2) // [B, L, C]
	if err != nil {
		return nil, err
	}
	return Result{
		"out.last_hidden_state":  {Shape: last.Shape, Data: last.Data},
		"out.penultimate_normed": {Shape: pen.Shape, Data: pen.Data},
	}, nil
}
