// run_ella_test.go runs "ella" cases: the connector file of the case
// (files.ella) with config.ella.heads maps in.text_features [B, N, Din] and
// in.timestep [B] to out.conditioning [B, Q, W]. It does not run T5. On a
// GPU the connector runs as models.ELLACUDA.
package golden

import (
	"fmt"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
)

// runELLA runs an "ella" case on the CPU.
func runELLA(c *Case) (Result, error) { return ellaCase(c, nil) }

// runELLAGPU runs an "ella" case on d's GPU.
func runELLAGPU(c *Case, d *host.Device) (Result, []string, error) {
	res, err := ellaCase(c, d)
	return res, nil, err
}

// ellaModel is the connector a case runs: *models.ELLA or its CUDA twin.
type ellaModel interface {
	Forward(x *nn.Tensor, t []float32) (*nn.Tensor, error)
}

// ellaCase runs an "ella" case on d (nil: the CPU).
func ellaCase(c *Case, d *host.Device) (_ Result, err error) {
	path, err := c.File("ella")
	if err != nil {
		return nil, err
	}
	var cfg struct {
		Heads int `json:"heads"`
	}
	if err := c.ConfigInto("ella", &cfg); err != nil {
		return nil, err
	}
	cpu, err := models.OpenELLA(path, cfg.Heads)
	if err != nil {
		return nil, err
	}
	var e ellaModel = cpu
	if d.OnGPU() {
		g, gerr := models.NewELLACUDA(d.GPU, cpu)
		if gerr != nil {
			return nil, gerr
		}
		defer closeGPU(g.Close, &err)
		e = g
	}
	x, shape, err := c.Input("in.text_features")
	if err != nil {
		return nil, err
	}
	if len(shape) != 3 {
		return nil, fmt.Errorf("in.text_features has shape %v, want [B, N, Din]", shape)
	}
	t, _, err := c.Input("in.timestep")
	if err != nil {
		return nil, err
	}
	out, err := e.Forward(nn.From(x, shape...), t) // [B, Q, W]
	if err != nil {
		return nil, err
	}
	return Result{"out.conditioning": {Shape: out.Shape, Data: out.Data}}, nil
}
