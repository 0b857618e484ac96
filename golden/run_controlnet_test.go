// run_controlnet_test.go runs "controlnet" cases: the ControlNet file (any
// accepted form) on in.x, in.hint, in.timesteps and in.context, compared on
// the 13 named residuals out.residual.<name>.
package golden

import (
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/safetensors"
)

// loadCaseControlNet opens the case's ControlNet file and binds it with the
// case's head count.
func loadCaseControlNet(c *Case) (*models.ControlNet, error) {
	var uc unetCaseConfig
	if err := c.ConfigInto("unet", &uc); err != nil {
		return nil, err
	}
	path, err := c.File("controlnet")
	if err != nil {
		return nil, err
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() // weights are widened into their own memory at bind time
	w, _, err := models.ControlNetWeights(f)
	if err != nil {
		return nil, err
	}
	cfg, err := models.InferControlNetConfig(w)
	if err != nil {
		return nil, err
	}
	cfg.NumHeads = uc.NumHeads
	return models.NewControlNet(w, cfg)
}

// caseResiduals runs the case ControlNet on the case inputs.
func caseResiduals(c *Case, cn *models.ControlNet) (models.Residuals, error) {
	x, ts, ctx, err := caseUNetInputs(c)
	if err != nil {
		return nil, err
	}
	hint, err := caseTensor(c, "in.hint")
	if err != nil {
		return nil, err
	}
	return cn.Forward(x, hint, ts, ctx)
}

// runControlNet runs a "controlnet" case.
func runControlNet(c *Case) (Result, error) {
	cn, err := loadCaseControlNet(c)
	if err != nil {
		return nil, err
	}
	res, err := caseResiduals(c, cn)
	if err != nil {
		return nil, err
	}
	out := Result{}
	for name, t := range res {
		out["out.residual."+name] = Array{Shape: t.Shape, Data: t.Data}
	}
	return out, nil
}
