// linear.go: the fully connected layer y = x W^T + b as one GEMM with the
// bias pre-filled into the output (beta = 1), so no second pass is needed.
// It does not quantise or transpose weights ahead of time.
package nn

// Linear is y = x W^T + b. Weight [out, in], Bias [out] or nil.
type Linear struct {
	Weight *Tensor
	Bias   *Tensor
}

// Forward maps x [..., in] to [..., out].
func (l *Linear) Forward(x *Tensor) *Tensor {
	out := l.Weight.Shape[0]
	mustf(len(x.Shape) > 0 && x.Shape[len(x.Shape)-1] == l.Weight.Shape[1], "Linear", "input %v, weight %v", x.Shape, l.Weight.Shape)
	shape := append(append([]int{}, x.Shape[:len(x.Shape)-1]...), out)
	y := &Tensor{Shape: shape, Data: make([]float32, x.Numel()/l.Weight.Shape[1]*out)} // [..., out]
	l.ForwardInto(y, x)
	return y
}

// ForwardInto writes x [..., in] W^T + b into y [..., out] (y's previous
// contents are overwritten).
func (l *Linear) ForwardInto(y, x *Tensor) {
	out, in := l.Weight.Shape[0], l.Weight.Shape[1]
	mustf(len(x.Shape) > 0 && x.Shape[len(x.Shape)-1] == in, "Linear", "input %v, weight %v", x.Shape, l.Weight.Shape)
	rows := x.Numel() / in
	mustf(len(y.Data) == rows*out, "Linear", "output %v for input %v, weight %v", y.Shape, x.Shape, l.Weight.Shape)
	beta := float32(0)
	if l.Bias != nil {
		bias := l.Bias.Data[:out]
		yd := y.Data[:rows*out]
		parallelFor(rows, out, func(lo, hi int) {
			for r := lo; r < hi; r++ {
				copy(yd[r*out:(r+1)*out], bias)
			}
		})
		beta = 1
	}
	Gemm(false, true, rows, out, in, 1, x.Data, in, l.Weight.Data, in, beta, y.Data, out)
}
