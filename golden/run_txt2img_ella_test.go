// run_txt2img_ella_test.go is the ELLA part of "txt2img" cases whose files
// include "ella": the ella plugin in its own process (plugins_test.go),
// driven by host.ELLAConditioner with the case's connector, T5 folder and
// spiece.model, in flexible mode (T5 ids = spiece ids + EOS, no padding;
// the negative prompt through the same path, at the same timestep). It does
// not load the pipeline (runTxt2Img does).
package golden

import (
	"context"
	"fmt"

	"github.com/sdbridge/sdbridge/host"
)

// txt2imgELLA sets req.Conditioner to the ELLA conditioner of a txt2img
// case with an "ella" file (flexible mode, the case's T5 folder and
// spiece.model, config.ella.heads), for a generation on p: prompt and
// req.Negative are encoded once by the plugin here. Call the returned
// cleanup after Generate.
func txt2imgELLA(c *Case, p *host.Loaded, req *host.Request) (cleanup func(), err error) {
	files := map[string]string{}
	for _, role := range []string{"ella", "t5", "t5_spiece"} {
		path, err := c.File(role)
		if err != nil {
			return nil, err
		}
		files[role] = path
	}
	var ec struct {
		Heads int `json:"heads"`
	}
	if err := c.ConfigInto("ella", &ec); err != nil {
		return nil, err
	}
	plug, err := goldenPlugin("ella")
	if err != nil {
		return nil, fmt.Errorf("ella plugin: %w", err)
	}
	plug.SetDevice(p.Device().ID())
	cond, err := host.NewELLAConditioner(context.Background(), plug, host.ELLAOptions{
		ELLA: files["ella"], T5: files["t5"], T5Tokenizer: files["t5_spiece"],
		Mode: host.ELLAFlexible, Heads: ec.Heads, ContextDim: p.UNetConfig.ContextDim, GPU: p.GPU(),
	}, req.Prompt, req.Negative)
	if err != nil {
		return nil, err
	}
	req.Conditioner = cond
	return func() { cond.Close() }, nil
}
