// text_cuda.go: what the text models' GPU forwards share (clip_cuda.go,
// t5_cuda.go, ella_cuda.go): textRun, gpuRun plus the text ops of
// nn/cuda_text*.go with the same sticky error, and textActOf, which
// identifies the CPU activation a weight struct holds (a func value) by
// evaluating it, so the GPU runs the very activation the CPU model runs.
// It holds no model.
package models

import (
	"fmt"
	"math"

	"github.com/sdbridge/sdbridge/nn"
)

// textRun composes text-model GPU ops with gpuRun's sticky error and
// temporaries.
type textRun struct {
	*gpuRun
}

func newTextRun(dw *deviceWeights) *textRun { return &textRun{gpuRun: newGPURun(dw)} }

// retain frees every temporary except keep (which stays recorded): the
// end of one layer, whose output the next layer reads.
func (r *textRun) retain(keep *nn.GPUTensor) {
	r.forget(keep)
	r.release()
	r.keep(keep, nil)
}

func (r *textRun) embed(table *nn.Tensor, ids [][]int, pos *nn.Tensor) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	tab, p := r.w(table), r.w(pos)
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.Embedding(tab, ids, p))
}

func (r *textRun) rmsNorm(x *nn.GPUTensor, n *T5RMSNorm) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.RMSNorm(x, r.w(n.Weight), n.Eps))
}

func (r *textRun) activate(x *nn.GPUTensor, act nn.TextAct) {
	if r.err == nil {
		r.do(r.g.Activate(x, act))
	}
}

func (r *textRun) gatedActivate(x, gate *nn.GPUTensor, act nn.TextAct) {
	if r.err == nil {
		r.do(r.g.GatedActivate(x, gate, act))
	}
}

func (r *textRun) addInPlace(a, b *nn.GPUTensor) {
	if r.err == nil {
		r.do(r.g.AddInPlace(a, b))
	}
}

func (r *textRun) add(a, b *nn.GPUTensor) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.Add(a, b))
}

func (r *textRun) attention(q, k, v *nn.GPUTensor, heads int, opt nn.GPUAttentionOpts) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.AttentionOpts(q, k, v, heads, opt))
}

func (r *textRun) upload(t *nn.Tensor) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.Upload(t))
}

// textActCandidates are the activations the text models' configs name,
// with their maths in float64.
var textActCandidates = []struct {
	act nn.TextAct
	f   func(float64) float64
}{
	{nn.TextReLU, func(x float64) float64 { return math.Max(x, 0) }},
	{nn.TextGELU, func(x float64) float64 { return 0.5 * x * (1 + math.Erf(x/math.Sqrt2)) }},
	{nn.TextGELUTanh, func(x float64) float64 {
		return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
	}},
	{nn.TextQuickGELU, func(x float64) float64 { return x / (1 + math.Exp(-1.702*x)) }},
	{nn.TextSiLU, func(x float64) float64 { return x / (1 + math.Exp(-x)) }},
	{nn.TextSquaredReLU, func(x float64) float64 { r := math.Max(x, 0); return r * r }},
}

// textActProbe are the points textActOf evaluates: far enough apart that
// the erf and tanh GELUs differ by more than 1e-4 somewhere (at -2.5 by
// 3.7e-4).
var textActProbe = []float32{-3, -2.5, -1, -0.25, 0.5, 1.5, 3}

// textActOf returns the GPU activation that equals the CPU in-place
// activation f (a model struct's Act) at the probe points; what names the
// activation in the config is not kept in every weight struct, the
// function is.
func textActOf(f func(*nn.Tensor)) (nn.TextAct, error) {
	if f == nil {
		return 0, fmt.Errorf("no activation function")
	}
	x := nn.From(append([]float32(nil), textActProbe...), len(textActProbe)) // [P]
	f(x)
	for _, c := range textActCandidates {
		ok := true
		for i, p := range textActProbe {
			if want := c.f(float64(p)); !(math.Abs(float64(x.Data[i])-want) <= 1e-4*max(1, math.Abs(want))) { // NaN fails
				ok = false
				break
			}
		}
		if ok {
			return c.act, nil
		}
	}
	return 0, fmt.Errorf("activation with values %v at %v is none of relu, gelu, gelu_new, quick_gelu, silu, squared relu", x.Data, textActProbe)
}
