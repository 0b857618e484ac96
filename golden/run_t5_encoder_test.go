// run_t5_encoder_test.go runs "t5_encoder" cases: the HF T5 folder of the
// case (files.t5) encodes in.ids [B, L] (with in.mask [B, L] in the padded
// case) and returns out.last_hidden_state [B, L, D]. It does not tokenize.
package golden

import (
	"fmt"

	"github.com/sdbridge/sdbridge/models"
)

// runT5Encoder runs a "t5_encoder" case.
func runT5Encoder(c *Case) (Result, error) {
	dir, err := c.File("t5")
	if err != nil {
		return nil, err
	}
	enc, err := models.LoadT5Encoder(dir)
	if err != nil {
		return nil, err
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
