// cuda_shape.go: the nn compute engine on an NVIDIA GPU, part 3: layout
// and broadcast ops the U-Net blocks need between layers: ChannelsLast /
// ChannelsFirst ([B, C, HW] <-> [B, HW, C], through a 32x32 shared-memory
// tile), nearest upsampling, channel concat, the per-(batch, channel) bias
// add of the time embedding, and an in-place add, for tensors of either
// dtype (outputs take the input's). One thread per element elsewhere; no
// general permute.
package nn

import (
	"fmt"

	"github.com/sdbridge/sdbridge/cuda"
)

// transposeInto writes x [B, R, K] transposed to y [B, K, R].
func (g *GPU) transposeInto(y, x *GPUTensor, b, r, k int) error {
	if x.Numel() != b*r*k || y.Numel() != b*r*k {
		return fmt.Errorf("nn: cuda transpose of %v into %v as [%d, %d, %d]", x.Shape, y.Shape, b, r, k)
	}
	dt, err := opDType("transpose", y, x)
	if err != nil {
		return err
	}
	grid := cuda.Dim3{X: uint32((k + 31) / 32), Y: uint32((r + 31) / 32), Z: uint32(b)}
	return g.launchBlock("elementwise.cu", dt.kernel("transpose_tiled"), grid, cuda.Dim3{X: 32, Y: 8}, 0, x.Buf, y.Buf, r, k)
}

// ChannelsLast maps x [B, C, H, W] to [B, H*W, C] (nn.ChannelsLast).
func (g *GPU) ChannelsLast(x *GPUTensor) (*GPUTensor, error) {
	b, c := x.Shape[0], x.Shape[1]
	hw := x.Numel() / (b * c)
	y, err := g.EmptyOf(x.DType, b, hw, c) // [B, HW, C]
	if err != nil {
		return nil, err
	}
	if err := g.transposeInto(y, x, b, c, hw); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// ChannelsFirst maps x [B, H*W, C] to [B, C, H, W] (nn.ChannelsFirst).
func (g *GPU) ChannelsFirst(x *GPUTensor, h, w int) (*GPUTensor, error) {
	b, hw, c := x.Shape[0], x.Shape[1], x.Shape[2]
	if hw != h*w {
		return nil, fmt.Errorf("nn: cuda ChannelsFirst: %v is not %dx%d pixels", x.Shape, h, w)
	}
	y, err := g.EmptyOf(x.DType, b, c, h, w) // [B, C, H, W]
	if err != nil {
		return nil, err
	}
	if err := g.transposeInto(y, x, b, hw, c); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// AddBatchChannelBias adds bias [B, C] to x [B, C, ...] in place
// (nn.AddBatchChannelBias).
func (g *GPU) AddBatchChannelBias(x, bias *GPUTensor) error {
	b, c := x.Shape[0], x.Shape[1]
	if bias.Numel() != b*c {
		return fmt.Errorf("nn: cuda AddBatchChannelBias: bias %v for x %v", bias.Shape, x.Shape)
	}
	dt, err := opDType("AddBatchChannelBias", x, bias)
	if err != nil {
		return err
	}
	n := x.Numel()
	return g.launch("elementwise.cu", dt.kernel("add_batch_channel_bias"), gridFor(n), x.Buf, bias.Buf, int64(n/(b*c)), int64(n))
}

// AddInPlace adds b to a (same sizes).
func (g *GPU) AddInPlace(a, b *GPUTensor) error { return g.AddInto(a, a, b) }

// UpsampleNearest resizes x [B, C, H, W] to [B, C, h, w] by nearest
// neighbour (nn.UpsampleNearest; 2x when h, w = 2H, 2W).
func (g *GPU) UpsampleNearest(x *GPUTensor, h, w int) (*GPUTensor, error) {
	b, c, ih, iw := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	y, err := g.EmptyOf(x.DType, b, c, h, w) // [B, C, h, w]
	if err != nil {
		return nil, err
	}
	n := y.Numel()
	if err := g.launch("elementwise.cu", x.DType.kernel("upsample_nearest"), gridFor(n), x.Buf, y.Buf, ih, iw, h, w, int64(n)); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// ConcatChannels joins a [B, C1, ...] and b [B, C2, ...] (same trailing
// sizes) into [B, C1+C2, ...] (nn.Concat(1, a, b)).
func (g *GPU) ConcatChannels(a, b *GPUTensor) (*GPUTensor, error) {
	if len(a.Shape) < 2 || len(a.Shape) != len(b.Shape) || a.Shape[0] != b.Shape[0] || numel(a.Shape[2:]) != numel(b.Shape[2:]) {
		return nil, fmt.Errorf("nn: cuda ConcatChannels of %v and %v", a.Shape, b.Shape)
	}
	dt, err := opDType("ConcatChannels", a, b)
	if err != nil {
		return nil, err
	}
	shape := append([]int{a.Shape[0], a.Shape[1] + b.Shape[1]}, a.Shape[2:]...)
	y, err := g.EmptyOf(dt, shape...) // [B, C1+C2, ...]
	if err != nil {
		return nil, err
	}
	bn := a.Shape[0]
	n := y.Numel()
	if err := g.launch("elementwise.cu", dt.kernel("concat2"), gridFor(n), a.Buf, b.Buf, y.Buf, int64(a.Numel()/bn), int64(b.Numel()/bn), int64(n)); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}
