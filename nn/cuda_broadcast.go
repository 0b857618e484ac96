// cuda_broadcast.go: the nn compute engine on an NVIDIA GPU, part 7:
// batch broadcasting, for a batch-1 tensor used with a batch-B one (a
// ControlNet's single hint for a whole batch): AddBroadcastInPlace (x +=
// y, y's batch 1 or B) and RepeatBatch (the broadcast as a copy). It does
// not broadcast over other axes.
package nn

import (
	"fmt"
	"slices"
)

// AddBroadcastInPlace adds y [1 or B, ...] to x [B, ...] (the same sizes
// after the batch axis), y's single item to every item of x when y's batch
// is 1.
//
//	CPU equivalent: AddInPlace(x, y repeated B times along axis 0)
func (g *GPU) AddBroadcastInPlace(x, y *GPUTensor) error {
	if len(x.Shape) < 1 || len(y.Shape) != len(x.Shape) || !slices.Equal(x.Shape[1:], y.Shape[1:]) ||
		(y.Shape[0] != 1 && y.Shape[0] != x.Shape[0]) {
		return fmt.Errorf("nn: cuda AddBroadcastInPlace: %v onto %v", y.Shape, x.Shape)
	}
	if y.Shape[0] == x.Shape[0] {
		return g.AddInto(x, x, y)
	}
	dt, err := opDType("AddBroadcastInPlace", x, y)
	if err != nil {
		return err
	}
	n := x.Numel()
	return g.launch("elementwise.cu", dt.kernel("add_row_bias"), gridFor(n), x.Buf, y.Buf, y.Numel(), int64(n))
}

// RepeatBatch returns x [1, ...] repeated b times along the batch axis:
// [b, ...].
func (g *GPU) RepeatBatch(x *GPUTensor, b int) (*GPUTensor, error) {
	if len(x.Shape) < 1 || x.Shape[0] != 1 || b < 1 {
		return nil, fmt.Errorf("nn: cuda RepeatBatch: %v to batch %d", x.Shape, b)
	}
	y, err := g.EmptyOf(x.DType, append([]int{b}, x.Shape[1:]...)...) // [b, ...]
	if err != nil {
		return nil, err
	}
	n := y.Numel()
	if err := g.launch("elementwise.cu", x.DType.kernel("bcast_rows"), gridFor(n), x.Buf, y.Buf, int64(x.Numel()), int64(n)); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}
