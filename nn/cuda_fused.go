// cuda_fused.go: the nn compute engine on an NVIDIA GPU, part 5: fused
// ops for the U-Net's hot paths, each replacing a chain of the plain ops
// with fewer passes over memory. LinearGEGLU folds the projection's bias
// into the gate kernel; LinearChannelsFirst reads an NCHW tensor as the
// transposed operand of the GEMM (no ChannelsLast pass before proj_in);
// LinearToChannelsFirstAddInto writes proj_out's product straight into
// NCHW and onto the residual (no ChannelsFirst pass, no separate add).
// Linear/Conv2d residual folding (LinearAddInto, Conv2dAddInto) and
// GroupNormEx (temb add + norm + SiLU) are in cuda_ops.go. Each is
// checked against its unfused CPU chain in cuda_ops_test.go.
package nn

import "fmt"

// LinearGEGLU is the feed-forward input of a transformer block,
// GEGLU(x W^T + b) for x [..., in], w [2D, in], bias [2D] or nil: one GEMM
// into a scratch [rows, 2D] and one kernel that adds the bias and gates;
// returns [..., D].
func (g *GPU) LinearGEGLU(x, w, bias *GPUTensor) (*GPUTensor, error) {
	if len(w.Shape) != 2 || w.Shape[0]%2 != 0 {
		return nil, fmt.Errorf("nn: cuda LinearGEGLU: weight %v", w.Shape)
	}
	in := x.Shape[len(x.Shape)-1]
	rows := x.Numel() / in
	h, err := g.EmptyOf(x.DType, rows, w.Shape[0]) // [rows, 2D]
	if err != nil {
		return nil, err
	}
	defer h.Free()
	if err := g.LinearInto(h, x, w, nil); err != nil {
		return nil, err
	}
	shape := append(append([]int{}, x.Shape[:len(x.Shape)-1]...), w.Shape[0]/2)
	y, err := g.EmptyOf(x.DType, shape...) // [..., D]
	if err != nil {
		return nil, err
	}
	if err := g.GEGLUInto(y, h, bias); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// LinearChannelsFirst is ChannelsLast followed by Linear in one GEMM per
// batch item: x [B, C, H, W] read as the transposed operand, w [out, C],
// bias [out] or nil; returns [B, H*W, out] (a SpatialTransformer's
// proj_in after its GroupNorm).
//
//	CPU equivalent: l.Forward(ChannelsLast(x))
func (g *GPU) LinearChannelsFirst(x, w, bias *GPUTensor) (*GPUTensor, error) {
	if len(x.Shape) < 3 || len(w.Shape) != 2 || w.Shape[1] != x.Shape[1] || (bias != nil && bias.Numel() != w.Shape[0]) {
		return nil, fmt.Errorf("nn: cuda LinearChannelsFirst: weight %v does not fit input %v", w.Shape, x.Shape)
	}
	dt, err := opDType("LinearChannelsFirst", x, w, bias)
	if err != nil {
		return nil, err
	}
	b, c, out := x.Shape[0], x.Shape[1], w.Shape[0]
	hw := x.Numel() / (b * c)
	y, err := g.EmptyOf(dt, b, hw, out) // [B, HW, out]
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*GPUTensor, error) {
		y.Free()
		return nil, err
	}
	for n := 0; n < b; n++ {
		xn, err := x.offset(n*c*hw, c*hw) // [C, HW]
		if err != nil {
			return fail(err)
		}
		yn, err := y.offset(n*hw*out, hw*out) // [HW, out]
		if err != nil {
			return fail(err)
		}
		// y_n [HW, out] = x_n^T [HW, C] w^T [C, out]
		if err := g.gemm("LinearChannelsFirst", dt, true, true, hw, out, c, 1, xn, hw, w.Buf, c, 0, yn, out); err != nil {
			return fail(err)
		}
	}
	if bias != nil {
		if err := g.AddRowBias(y, bias); err != nil {
			return fail(err)
		}
	}
	return y, nil
}

// LinearToChannelsFirstAddInto adds ChannelsFirst(h W^T + b) to y: h [B,
// H*W, C], w [out, C], bias [out] or nil, y [B, out, H, W] (the residual,
// updated in place): one GEMM per batch item with beta = 1 (a
// SpatialTransformer's proj_out and its "+ x_in").
//
//	CPU equivalent: AddInPlace(y, ChannelsFirst(l.Forward(h), H, W))
func (g *GPU) LinearToChannelsFirstAddInto(y, h, w, bias *GPUTensor) error {
	if len(h.Shape) != 3 || len(w.Shape) != 2 || w.Shape[1] != h.Shape[2] || len(y.Shape) < 2 {
		return fmt.Errorf("nn: cuda LinearToChannelsFirstAddInto: weight %v does not fit input %v", w.Shape, h.Shape)
	}
	b, hw, c, out := h.Shape[0], h.Shape[1], h.Shape[2], w.Shape[0]
	if y.Shape[0] != b || y.Shape[1] != out || y.Numel() != b*out*hw || (bias != nil && bias.Numel() != out) {
		return fmt.Errorf("nn: cuda LinearToChannelsFirstAddInto: output %v or bias for input %v and weight %v", y.Shape, h.Shape, w.Shape)
	}
	dt, err := opDType("LinearToChannelsFirstAddInto", y, h, w, bias)
	if err != nil {
		return err
	}
	for n := 0; n < b; n++ {
		hn, err := h.offset(n*hw*c, hw*c) // [HW, C]
		if err != nil {
			return err
		}
		yn, err := y.offset(n*out*hw, out*hw) // [out, HW]
		if err != nil {
			return err
		}
		// y_n [out, HW] += w [out, C] h_n^T [C, HW]
		if err := g.gemm("LinearToChannelsFirstAddInto", dt, false, true, out, hw, c, 1, w.Buf, c, hn, c, 1, yn, hw); err != nil {
			return err
		}
	}
	if bias != nil {
		n := y.Numel()
		return g.launch("elementwise.cu", dt.kernel("add_channel_bias"), gridFor(n), y.Buf, bias.Buf, out, int64(hw), int64(n))
	}
	return nil
}
