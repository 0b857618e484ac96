// run_unet_controlnet_test.go runs "unet_controlnet" cases: the ControlNet's
// residuals times in.strength added to the checkpoint U-Net by name,
// compared on out.eps. On a GPU both run as their CUDA types.
package golden

import (
	"fmt"

	"github.com/sdbridge/sdbridge/host"
)

// runUNetControlNet runs a "unet_controlnet" case on the CPU.
func runUNetControlNet(c *Case) (Result, error) { return unetControlNetCase(c, nil) }

// runUNetControlNetGPU runs a "unet_controlnet" case on d's GPU.
func runUNetControlNetGPU(c *Case, d *host.Device) (Result, []string, error) {
	res, err := unetControlNetCase(c, d)
	return res, nil, err
}

// unetControlNetCase runs a "unet_controlnet" case on d (nil: the CPU).
func unetControlNetCase(c *Case, d *host.Device) (_ Result, err error) {
	cpuU, err := loadCaseUNet(c)
	if err != nil {
		return nil, err
	}
	cpuCN, err := loadCaseControlNet(c)
	if err != nil {
		return nil, err
	}
	if err := cpuCN.CheckCompatible(cpuU.Config); err != nil {
		return nil, err
	}
	u, closeU, err := deviceUNet(cpuU, d)
	if err != nil {
		return nil, err
	}
	defer closeGPU(closeU, &err)
	cn, closeCN, err := deviceControlNet(cpuCN, d)
	if err != nil {
		return nil, err
	}
	defer closeGPU(closeCN, &err)
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
