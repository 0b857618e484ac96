// run_ella_test.go runs "ella" cases: the connector file of the case
// (files.ella) with config.ella.heads maps in.text_features [B, N, Din] and
// in.timestep [B] to out.conditioning [B, Q, W]. It does not run T5.
package golden

import (
	"fmt"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
)

// runELLA runs an "ella" case.
func runELLA(c *Case) (Result, error) {
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
	e, err := models.OpenELLA(path, cfg.Heads)
	if err != nil {
		return nil, err
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
