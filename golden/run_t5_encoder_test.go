// run_t5_encoder_test.go runs "t5_encoder" cases: the HF T5 folder of the
// case (files.t5) encodes in.ids [B, L] (with in.mask [B, L] in the padded
// case) and returns out.last_hidden_state [B, L, D]. It does not tokenize.
// On a GPU the encoder runs as models.T5CUDA.
package golden

import (
	"fmt"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
)

// runT5Encoder runs a "t5_encoder" case on the CPU.
func runT5Encoder(c *Case) (Result, error) { return t5EncoderCase(c, nil) }

// runT5EncoderGPU runs a "t5_encoder" case on d's GPU.
func runT5EncoderGPU(c *Case, d *host.Device) (Result, []string, error) {
	res, err := t5EncoderCase(c, d)
	return res, nil, err
}

// t5Model is the encoder a case runs: *models.T5Encoder or its CUDA twin.
type t5Model interface {
	Encode(ids [][]int, mask [][]bool) (*nn.Tensor, error)
}

// t5EncoderCase runs a "t5_encoder" case on d (nil: the CPU).
func t5EncoderCase(c *Case, d *host.Device) (_ Result, err error) {
	dir, err := c.File("t5")
	if err != nil {
		return nil, err
	}
	cpu, err := models.LoadT5Encoder(dir)
	if err != nil {
		return nil, err
	}
	var enc t5Model = cpu
	if d.OnGPU() {
		g, gerr := models.NewT5CUDA(d.GPU, cpu)
		if gerr != nil {
			return nil, gerr
		}
		defer closeGPU(g.Close, &err)
		enc = g
	}
	flat, shape, err := c.InputInts("in.ids")
	if err != nil {
		return nil, err
	}
	if len(shape) != 2 {
		return nil, fmt.Errorf("in.ids has shape %v, want [B, L]", shape)
	}
	b, n := shape[0], shape[1]
	ids := make([][]int, b)
	for i := range ids {
		ids[i] = make([]int, n)
		for j := range n {
			ids[i][j] = int(flat[i*n+j])
		}
	}
	var mask [][]bool
	if c.HasInput("in.mask") {
		m, mshape, err := c.InputInts("in.mask")
		if err != nil {
			return nil, err
		}
		if len(mshape) != 2 || mshape[0] != b || mshape[1] != n {
			return nil, fmt.Errorf("in.mask has shape %v, want [%d, %d]", mshape, b, n)
		}
		mask = make([][]bool, b)
		for i := range mask {
			mask[i] = make([]bool, n)
			for j := range n {
				mask[i][j] = m[i*n+j] != 0
			}
		}
	}
	out, err := enc.Encode(ids, mask) // [B, L, D]
	if err != nil {
		return nil, err
	}
	return Result{"out.last_hidden_state": {Shape: out.Shape, Data: out.Data}}, nil
}
