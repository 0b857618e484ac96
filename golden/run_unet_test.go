// run_unet_test.go runs "unet" cases: the checkpoint's U-Net on in.x,
// in.timesteps and in.context, compared on out.eps. The head count comes
// from the case config (it is not stored in the weights). On a GPU the
// U-Net runs as models.UNetCUDA.
package golden

import (
	"fmt"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// unetCaseConfig is the part of config "unet" the runners need.
type unetCaseConfig struct {
	NumHeads int `json:"num_heads"`
}

// loadCaseUNet opens the case checkpoint and binds its U-Net with the
// case's head count.
func loadCaseUNet(c *Case) (*models.UNet, error) {
	var uc unetCaseConfig
	if err := c.ConfigInto("unet", &uc); err != nil {
		return nil, err
	}
	path, err := c.File("checkpoint")
	if err != nil {
		return nil, err
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() // weights are widened into their own memory at bind time
	w := models.NewWeights(f).Sub("model.diffusion_model.")
	cfg, err := models.InferUNetConfig(w)
	if err != nil {
		return nil, err
	}
	cfg.NumHeads = uc.NumHeads
	return models.NewUNet(w, cfg)
}

// caseTensor reads a float input as an nn.Tensor.
func caseTensor(c *Case, name string) (*nn.Tensor, error) {
	d, shape, err := c.Input(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return nn.From(d, shape...), nil
}

// caseUNetInputs reads in.x, in.timesteps and in.context.
func caseUNetInputs(c *Case) (x *nn.Tensor, ts []float32, ctx *nn.Tensor, err error) {
	if x, err = caseTensor(c, "in.x"); err != nil {
		return
	}
	if ts, _, err = c.Input("in.timesteps"); err != nil {
		return
	}
	ctx, err = caseTensor(c, "in.context")
	return
}

// runUNet runs a "unet" case on the CPU.
func runUNet(c *Case) (Result, error) { return unetCase(c, nil) }

// runUNetGPU runs a "unet" case on d's GPU.
func runUNetGPU(c *Case, d *host.Device) (Result, []string, error) {
	res, err := unetCase(c, d)
	return res, nil, err
}

// deviceUNet returns u on d (u itself on the CPU) and its closer.
func deviceUNet(u *models.UNet, d *host.Device) (host.EpsModel, func() error, error) {
	if !d.OnGPU() {
		return u, func() error { return nil }, nil
	}
	g, err := models.NewUNetCUDA(d.GPU, u)
	if err != nil {
		return nil, nil, err
	}
	return g, g.Close, nil
}

// unetCase runs a "unet" case on d (nil: the CPU).
func unetCase(c *Case, d *host.Device) (_ Result, err error) {
	cpu, err := loadCaseUNet(c)
	if err != nil {
		return nil, err
	}
	u, closeU, err := deviceUNet(cpu, d)
	if err != nil {
		return nil, err
	}
	defer closeGPU(closeU, &err)
	x, ts, ctx, err := caseUNetInputs(c)
	if err != nil {
		return nil, err
	}
	eps, err := u.Forward(x, ts, ctx, nil)
	if err != nil {
		return nil, err
	}
	return Result{"out.eps": {Shape: eps.Shape, Data: eps.Data}}, nil
}
