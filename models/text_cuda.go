// text_cuda.go: what the text models' GPU forwards share (clip_cuda.go,
// t5_cuda.go, ella_cuda.go): textRun, gpuRun plus the text ops of
// nn/cuda_text*.go with the same sticky error, and textActOf, which maps
// the activation name a weight struct records (ActName, from the config)
// to the GPU kernel. It holds no model.
package models

import (
	"fmt"

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

// textActs maps the activation names of CLIP (hidden_act) and T5
// (feed_forward_proj) configs to the GPU activation with the same maths.
var textActs = map[string]nn.TextAct{
	"relu":              nn.TextReLU,
	"gelu":              nn.TextGELU,     // exact erf GELU
	"gelu_new":          nn.TextGELUTanh, // tanh approximation
	"gelu_pytorch_tanh": nn.TextGELUTanh,
	"quick_gelu":        nn.TextQuickGELU,
	"silu":              nn.TextSiLU,
}

// textActOf returns the GPU activation for a weight struct's ActName.
func textActOf(name string) (nn.TextAct, error) {
	act, ok := textActs[name]
	if !ok {
		return 0, fmt.Errorf("activation %q has no GPU kernel", name)
	}
	return act, nil
}
