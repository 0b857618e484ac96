// cuda_run.go: the shared plumbing of the models' GPU forwards (the
// *_cuda.go files): deviceWeights uploads each CPU weight tensor once and
// keeps its device copy (Sync rewrites patched ones in place), and gpuRun composes
// nn's GPU ops with a sticky error, recording every temporary so one
// release frees a whole forward's activations. The GPU forwards walk the
// same weight structs as the CPU Forward methods, line for line.
package models

import (
	"github.com/sdbridge/sdbridge/nn"
)

// deviceWeights maps CPU weight tensors to their device copies.
type deviceWeights struct {
	g *nn.GPU
	m map[*nn.Tensor]*nn.GPUTensor
}

func newDeviceWeights(g *nn.GPU) *deviceWeights {
	return &deviceWeights{g: g, m: map[*nn.Tensor]*nn.GPUTensor{}}
}

// get uploads t once (nil stays nil).
func (d *deviceWeights) get(t *nn.Tensor) (*nn.GPUTensor, error) {
	if t == nil {
		return nil, nil
	}
	if w, ok := d.m[t]; ok {
		return w, nil
	}
	w, err := d.g.Upload(t)
	if err != nil {
		return nil, err
	}
	d.m[t] = w
	return w, nil
}

// Sync rewrites the device copies of ts in place (weights patched on the
// CPU, a LoRA for example); tensors never uploaded are skipped. Device
// addresses stay, so captured graphs and exported views remain valid.
func (d *deviceWeights) Sync(ts []*nn.Tensor) error {
	for _, t := range ts {
		if w, ok := d.m[t]; ok {
			if err := w.Set(t); err != nil {
				return err
			}
		}
	}
	return nil
}

// Close frees every device copy.
func (d *deviceWeights) Close() error {
	var first error
	for t, w := range d.m {
		if err := w.Free(); err != nil && first == nil {
			first = err
		}
		delete(d.m, t)
	}
	return first
}

// gpuRun composes GPU ops with a sticky error and frees its temporaries.
type gpuRun struct {
	g   *nn.GPU
	dw  *deviceWeights
	err error
	tmp []*nn.GPUTensor
}

func newGPURun(dw *deviceWeights) *gpuRun { return &gpuRun{g: dw.g, dw: dw} }

// keep records t as a temporary (freed by release) and passes it on.
func (r *gpuRun) keep(t *nn.GPUTensor, err error) *nn.GPUTensor {
	r.do(err)
	if t != nil {
		r.tmp = append(r.tmp, t)
	}
	return t
}

// w returns the device copy of a weight (nil stays nil).
func (r *gpuRun) w(t *nn.Tensor) *nn.GPUTensor {
	if t == nil || r.err != nil {
		return nil
	}
	d, err := r.dw.get(t)
	r.do(err)
	return d
}

// release frees the temporaries recorded so far.
func (r *gpuRun) release() {
	for _, t := range r.tmp {
		t.Free()
	}
	r.tmp = nil
}

// forget drops t from the temporaries (a result handed to the caller).
func (r *gpuRun) forget(t *nn.GPUTensor) {
	for i, x := range r.tmp {
		if x == t {
			r.tmp = append(r.tmp[:i], r.tmp[i+1:]...)
			return
		}
	}
}

func (r *gpuRun) do(err error) {
	if r.err == nil && err != nil {
		r.err = err
	}
}

func (r *gpuRun) linear(x *nn.GPUTensor, l *nn.Linear) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.Linear(x, r.w(l.Weight), r.w(l.Bias)))
}

func (r *gpuRun) conv(x *nn.GPUTensor, c *nn.Conv2d) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.Conv2d(x, r.w(c.Weight), r.w(c.Bias), c.Stride, c.Padding))
}

func (r *gpuRun) groupNorm(x *nn.GPUTensor, n *nn.GroupNorm, silu bool) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.GroupNorm(x, r.w(n.Weight), r.w(n.Bias), n.Groups, n.Eps, silu))
}

func (r *gpuRun) layerNorm(x *nn.GPUTensor, n *nn.LayerNorm) *nn.GPUTensor {
	if r.err != nil {
		return nil
	}
	return r.keep(r.g.LayerNorm(x, r.w(n.Weight), r.w(n.Bias), n.Eps))
}
