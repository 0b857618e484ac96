// run_txt2img_controlnet_test.go: the ControlNet part of "txt2img" cases
// whose files include "controlnet": the case's ControlNet file, in.hint and
// in.controlnet_strength become a host.ControlNetSource served by the real
// controlnet plugin process (plugins_test.go), on both CFG halves for every
// step, with the same x, t and context as the U-Net (ELLA's context when
// the case has ELLA). It does not load the pipeline (runTxt2Img does).
package golden

import (
	"context"
	"fmt"

	"github.com/sdbridge/sdbridge/host"
)

// txt2imgControlNet sets req.Residuals to the case's ControlNet (strength
// in.controlnet_strength, every step, both CFG halves) for a generation on
// p. Fill req (steps, schedule, cfg, size, batch) first; call the returned
// cleanup after Generate.
func txt2imgControlNet(c *Case, p *host.Loaded, req *host.Request) (cleanup func(), err error) {
	file, err := c.File("controlnet")
	if err != nil {
		return nil, err
	}
	hint, err := caseTensor(c, "in.hint")
	if err != nil {
		return nil, err
	}
	strength, err := caseScalar(c, "in.controlnet_strength", 1)
	if err != nil {
		return nil, err
	}
	plugin, err := goldenPlugin("controlnet")
	if err != nil {
		return nil, fmt.Errorf("controlnet plugin: %w", err)
	}
	plugin.SetDevice(p.Device().ID())
	src, err := host.NewControlNetSource(context.Background(), plugin, host.ControlNetOptions{
		UNet: p.UNetConfig, Schedule: p.Schedule, ScheduleName: req.Schedule, Steps: req.Steps,
		Batch: max(req.Batch, 1), CFG: req.CFG, Width: req.Width, Height: req.Height, GPU: p.GPU(),
	}, []host.ControlNetUnit{{Path: file, Hint: hint, Strength: strength, Start: 0, End: 1}})
	if err != nil {
		return nil, err
	}
	req.Residuals = src
	return func() { src.Close() }, nil
}
