// plan.go validates a list of adapters against a checkpoint, all at once,
// and lists what each touched checkpoint tensor needs (spec §10.1, §10.3,
// §10.4). Nothing is planned unless every adapter passes: architecture
// (arch.go), every module resolved (aliases.go), every shape fitting
// (check.go), at least one module matched.
//
// Apply then computes one merged tensor from its original float32 values:
// every adapter's ops in list order on one float32 buffer, which the caller
// casts once to its storage dtype. Apply is safe for concurrent use on
// different keys. This file does not read or write checkpoint tensors and
// does not cast: callers own storage (arena, mmap, GPU), restore and
// incremental swaps.
package lora

import (
	"fmt"
	"slices"
	"strings"
)

// Adapter is one adapter file with its strengths.
type Adapter struct {
	File *File
	// UNet and TE are the strengths for U-Net and text-encoder tensors.
	UNet, TE float64
	// Blocks is an optional lora-block-weight vector (17 or 26 values,
	// blockweights.go); nil means 1 everywhere.
	Blocks []float64
}

// Op is one adapter module acting on one checkpoint tensor.
type Op struct {
	Adapter  int     // index in the adapter list
	Module   string  // module name in the adapter file
	Algo     Algo    //
	Strength float64 // m: component strength x block weight
	Scale    float64 // s: alpha/rank (1 for ia3/full/norm)
	DoRA     bool

	file   *File
	mod    *Module
	bias   bool // acts on <module>.bias
	doraIn bool
	padIn  int // > 0: the module covers only the first padIn input channels (inpaint.go)
}

// Target is one checkpoint tensor the plan changes.
type Target struct {
	Key   string // checkpoint key, e.g. "model.diffusion_model.input_blocks.1.1.proj_in.weight"
	Shape []int
	Ops   []Op // in adapter order
}

// Plan is a validated merge of adapters into one checkpoint.
type Plan struct {
	targets map[string]*Target
	keys    []string
	// Ignored lists, per adapter, tensors deliberately skipped
	// (textual-inversion bundles).
	Ignored []string
}

// maxListed bounds how many names an error lists.
const maxListed = 10

// NewPlan builds the forward lookup of ckpt and plans adapters on it.
// Build one Index per checkpoint with NewIndex and call Index.Plan when
// planning repeatedly.
func NewPlan(ckpt Keys, adapters []Adapter) (*Plan, error) {
	return NewIndex(ckpt).Plan(adapters)
}

// Plan validates every adapter and lists the tensors they touch. Any
// failure refuses the whole request (nothing is half-planned).
func (ix *Index) Plan(adapters []Adapter) (*Plan, error) {
	p := &Plan{targets: map[string]*Target{}}
	for ai, ad := range adapters {
		f := ad.File
		if f == nil {
			return nil, fmt.Errorf("lora: adapter %d has no file", ai)
		}
		blocks, err := ExpandBlockWeights(ad.Blocks)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Path, err)
		}
		if err := ix.checkArch(f); err != nil {
			return nil, err
		}
		var unmatched, shapeErrs []string
		var firstShape error
		type bound struct {
			m  *Module
			cm *CkptModule
			b  binding
		}
		var ok []bound
		for _, m := range f.Modules {
			cm, found := ix.Resolve(m.Name)
			if !found {
				unmatched = append(unmatched, m.Name)
				continue
			}
			b, err := f.check(m, cm)
			if err != nil {
				if pb, ok := f.checkInpaintPad(m, cm); ok {
					b, err = pb, nil
				}
			}
			if err != nil {
				if firstShape == nil {
					firstShape = err
				}
				shapeErrs = append(shapeErrs, err.Error())
				continue
			}
			ok = append(ok, bound{m, cm, b})
		}
		if len(unmatched) > 0 {
			return nil, fmt.Errorf("%w: %s: %d of %d modules match no checkpoint tensor: %s", ErrUnmatched, f.Path,
				len(unmatched), len(f.Modules), listFirst(unmatched, maxListed))
		}
		if len(shapeErrs) == 1 {
			return nil, firstShape
		}
		if len(shapeErrs) > 1 {
			return nil, fmt.Errorf("%w (%d modules): %s", firstShape, len(shapeErrs), listFirst(shapeErrs[1:], maxListed-1))
		}
		if len(ok) == 0 {
			return nil, fmt.Errorf("%w: %s has no module that matches the checkpoint", ErrUnmatched, f.Path)
		}
		for _, s := range f.Skipped {
			p.Ignored = append(p.Ignored, f.Path+": "+s)
		}
		for _, bd := range ok {
			base := ad.UNet
			if bd.cm.Component == TextEncoder {
				base = ad.TE
			}
			mult := base
			if blocks != nil {
				if slot := blockOf(bd.cm); slot >= 0 {
					mult *= blocks[slot]
				}
			}
			if mult == 0 {
				continue // strength 0 leaves the tensor as stored
			}
			op := Op{Adapter: ai, Module: bd.m.Name, Algo: bd.m.Algo, Strength: mult, Scale: bd.b.scale, DoRA: bd.m.DoRA,
				file: f, mod: bd.m, doraIn: bd.b.doraIn, padIn: bd.b.padIn}
			if bd.b.weight {
				p.add(bd.cm.Name+".weight", bd.cm.Weight, op)
			}
			if bd.b.bias {
				op.bias = true
				p.add(bd.cm.Name+".bias", bd.cm.Bias, op)
			}
		}
	}
	slices.Sort(p.keys)
	return p, nil
}

func (p *Plan) add(key string, shape []int, op Op) {
	t := p.targets[key]
	if t == nil {
		t = &Target{Key: key, Shape: shape}
		p.targets[key] = t
		p.keys = append(p.keys, key)
	}
	t.Ops = append(t.Ops, op)
}

// Keys lists the checkpoint keys the plan changes, sorted.
func (p *Plan) Keys() []string { return slices.Clone(p.keys) }

// Target returns the planned ops of one checkpoint key.
func (p *Plan) Target(key string) (*Target, bool) {
	t, ok := p.targets[key]
	return t, ok
}

// Signature describes what the plan does to key: an ordered list of
// (adapter index, file, module, algorithm, strength), for incremental swaps
// (spec §10.6). "" when the plan leaves key alone.
func (p *Plan) Signature(key string) string {
	t, ok := p.targets[key]
	if !ok {
		return ""
	}
	var b strings.Builder
	for _, o := range t.Ops {
		fmt.Fprintf(&b, "%d|%s|%s|%s|%v|%t;", o.Adapter, o.file.Path, o.Module, o.Algo, o.Strength, o.bias)
	}
	return b.String()
}

// Apply computes the merged float32 tensor of key from its original values:
// dst = orig, then every op in adapter order. dst may alias orig; both hold
// numel(shape) values.
func (p *Plan) Apply(key string, orig, dst []float32) error {
	t, ok := p.targets[key]
	if !ok {
		return fmt.Errorf("lora: %q is not touched by this plan", key)
	}
	n := numel(t.Shape)
	if len(orig) != n || len(dst) != n {
		return fmt.Errorf("lora: %q holds %d values (shape %v), got orig %d and dst %d", key, n, t.Shape, len(orig), len(dst))
	}
	copy(dst, orig)
	for i := range t.Ops {
		if t.Ops[i].padIn > 0 {
			if err := t.Ops[i].applyPadded(t.Shape, dst); err != nil {
				return fmt.Errorf("lora: %s: %w", key, err)
			}
			continue
		}
		if err := t.Ops[i].apply(t.Shape, dst); err != nil {
			return fmt.Errorf("lora: %s: %w", key, err)
		}
	}
	return nil
}
