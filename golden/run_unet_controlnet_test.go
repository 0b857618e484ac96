// run_unet_controlnet_test.go runs "unet_controlnet" cases: the ControlNet's
// residuals times in.strength added to the checkpoint U-Net by name,
// compared on out.eps.
package golden

import "fmt"

// runUNetControlNet runs a "unet_controlnet" case.
func runUNetControlNet(c *Case) (Result, error) {
	u, err := loadCaseUNet(c)
	if err != nil {
		return nil, err
	}
	cn, err := loadCaseControlNet(c)
	if err != nil {
		return nil, err
	}
	if err := cn.CheckCompatible(u.Config); err != nil {
		return nil, err
	}
	strength, _, err := c.Input("in.strength")
	if err != nil {
		return nil, err
	}
	if len(strength) != 1 {
		return nil, fmt.Errorf("in.strength has %d values, want 1", len(strength))
	}
	res, err := controlNetCaseResiduals(c, cn)
	if err != nil {
		return nil, err
	}
	res.Scale(strength[0])
	x, ts, ctx, err := caseUNetInputs(c)
	if err != nil {
		return nil, err
	}
	eps, err := u.Forward(x, ts, ctx, res)
	if err != nil {
		return nil, err
	}
	return Result{"out.eps": {Shape: eps.Shape, Data: eps.Data}}, nil
}
