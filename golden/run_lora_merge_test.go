// run_lora_merge_test.go runs "lora_merge" cases: the case's adapter file
// merged into its checkpoint at in.strength_unet / in.strength_te, every
// touched tensor returned as float32 before any cast (spec §10.4).
//
// For now it calls plugins/lora directly; it does not go through the plugin
// process and shared arenas (the bridge will route it there).
package golden

import (
	"fmt"

	"github.com/sdbridge/sdbridge/plugins/lora"
	"github.com/sdbridge/sdbridge/safetensors"
)

// runLoRAMerge runs a "lora_merge" case.
func runLoRAMerge(c *Case) (Result, error) {
	ckptPath, err := c.File("checkpoint")
	if err != nil {
		return nil, err
	}
	loraPath, err := c.File("lora")
	if err != nil {
		return nil, err
	}
	su, _, err := c.Input("in.strength_unet")
	if err != nil {
		return nil, err
	}
	st, _, err := c.Input("in.strength_te")
	if err != nil {
		return nil, err
	}
	ckpt, err := safetensors.Open(ckptPath)
	if err != nil {
		return nil, err
	}
	defer ckpt.Close()
	f, err := lora.Load(loraPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	plan, err := lora.NewPlan(ckpt, []lora.Adapter{{File: f, UNet: float64(su[0]), TE: float64(st[0])}})
	if err != nil {
		return nil, err
	}
	res := Result{}
	for _, key := range plan.Keys() {
		t, err := ckpt.Get(key)
		if err != nil {
			return nil, err
		}
		orig, err := t.Float32()
		if err != nil {
			return nil, err
		}
		dst := make([]float32, len(orig))
		if err := plan.Apply(key, orig, dst); err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		res["out."+key] = Array{Shape: t.Shape, Data: dst}
	}
	return res, nil
}
