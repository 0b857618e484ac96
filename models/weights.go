// Package models holds the network definitions shared by host and plugins:
// U-Net, VAE, CLIP text encoder, T5 encoder, ELLA connector, ControlNet.
//
// weights.go is strict weight binding: every layer asks for its tensors by
// canonical checkpoint key and exact shape; a missing or mis-shaped tensor is
// an error naming the key, and keys nobody asked for are reported. Weights
// are widened to float32 at bind time (the CPU engine computes in float32),
// into memory from an allocator the host may point at a shared arena.
package models

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// Source is anything that maps tensor names to stored tensors: a
// *safetensors.File, or a sharded set.
type Source interface {
	Get(name string) (safetensors.Tensor, error)
	Lookup(name string) (*safetensors.Info, bool)
	Names() []string
}

// Releaser is a Source whose stored bytes can be dropped from memory once a
// tensor is bound (*safetensors.File: madvise on its mapping).
type Releaser interface {
	Release(name string)
}

// Weights binds tensors from a Source under a key prefix. Errors are sticky:
// after the first failure every getter returns nil and Err reports it, so a
// layer constructor can ask for all its tensors and check once.
type Weights struct {
	src    Source
	prefix string
	st     *bindState
}

type bindState struct {
	err   error
	used  map[string]bool
	alloc func(n int) []float32
}

// NewWeights binds from src with no prefix.
func NewWeights(src Source) *Weights {
	return &Weights{src: src, st: &bindState{used: map[string]bool{}, alloc: func(n int) []float32 { return make([]float32, n) }}}
}

// SetAlloc makes bound tensors live in memory from alloc (e.g. a shared arena).
func (w *Weights) SetAlloc(alloc func(n int) []float32) { w.st.alloc = alloc }

// Sub returns a view whose keys are prefixed by p (include the trailing dot:
// Sub("model.diffusion_model.")). It shares error and usage state.
func (w *Weights) Sub(p string) *Weights {
	return &Weights{src: w.src, prefix: w.prefix + p, st: w.st}
}

// Prefix is the full key prefix of this view.
func (w *Weights) Prefix() string { return w.prefix }

// Err is the first binding error, if any.
func (w *Weights) Err() error { return w.st.err }

// Fail records an error (the first one wins) and returns it.
func (w *Weights) Fail(err error) error {
	if w.st.err == nil {
		w.st.err = err
	}
	return w.st.err
}

// Has reports whether key (under the prefix) exists.
func (w *Weights) Has(key string) bool {
	_, ok := w.src.Lookup(w.prefix + key)
	return ok
}

// Shape returns the stored shape of key, or nil if absent.
func (w *Weights) Shape(key string) []int {
	if info, ok := w.src.Lookup(w.prefix + key); ok {
		return info.Shape
	}
	return nil
}

// Tensor binds key with exactly the given shape, widened to float32.
// Pass no shape to accept whatever is stored.
func (w *Weights) Tensor(key string, shape ...int) *nn.Tensor {
	if w.st.err != nil {
		return nil
	}
	full := w.prefix + key
	t, err := w.src.Get(full)
	if err != nil {
		w.Fail(fmt.Errorf("missing tensor %q", full))
		return nil
	}
	if len(shape) > 0 && !slices.Equal(t.Shape, shape) {
		w.Fail(fmt.Errorf("tensor %q has shape %v, want %v", full, t.Shape, shape))
		return nil
	}
	data := w.st.alloc(t.Numel())
	if err := t.Float32Into(data); err != nil {
		w.Fail(fmt.Errorf("tensor %q: %w", full, err))
		return nil
	}
	w.st.used[full] = true
	if r, ok := w.src.(Releaser); ok {
		r.Release(full) // the float32 copy is what stays resident
	}
	return nn.From(data, t.Shape...)
}

// Linear binds key.weight [out, in] and key.bias [out] (when bias is true).
func (w *Weights) Linear(key string, in, out int, bias bool) *nn.Linear {
	l := &nn.Linear{Weight: w.Tensor(key+".weight", out, in)}
	if bias {
		l.Bias = w.Tensor(key+".bias", out)
	}
	return l
}

// Conv2d binds key.weight [out, in, k, k] and key.bias [out].
func (w *Weights) Conv2d(key string, in, out, k, stride, pad int) *nn.Conv2d {
	return &nn.Conv2d{
		Weight:  w.Tensor(key+".weight", out, in, k, k),
		Bias:    w.Tensor(key+".bias", out),
		Stride:  stride,
		Padding: pad,
	}
}

// GroupNorm binds key.weight and key.bias [c].
func (w *Weights) GroupNorm(key string, groups, c int, eps float32) *nn.GroupNorm {
	return &nn.GroupNorm{Groups: groups, Eps: eps, Weight: w.Tensor(key+".weight", c), Bias: w.Tensor(key+".bias", c)}
}

// LayerNorm binds key.weight and key.bias [c].
func (w *Weights) LayerNorm(key string, c int, eps float32) *nn.LayerNorm {
	return &nn.LayerNorm{Eps: eps, Weight: w.Tensor(key+".weight", c), Bias: w.Tensor(key+".bias", c)}
}

// Unused lists the keys under this view's prefix that were never bound.
func (w *Weights) Unused() []string {
	var out []string
	for _, n := range w.src.Names() {
		if strings.HasPrefix(n, w.prefix) && !w.st.used[n] {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}
