// plugin_patch.go: patch, restore and swap of model weights through a
// WeightPatcher plugin, with bit-exact restores and atomic failure.
//
// The model's float32 weights live in plugin-writable arenas. A patch is
// planned first (the plugin names the tensors it will write and refuses the
// whole request if anything does not apply), then the host restores the
// union of the previously patched and the newly touched tensors to their
// original values (re-widened from the mmap'd checkpoint: "restore, never
// subtract") and grants the touched ones writable; the plugin merges in place.
//
// Atomicity (chosen design: host snapshots). Before the call the host copies
// the currently patched tensors of that union into private memory; if the
// plugin fails, crashes or hangs, every tensor of the union is put back
// (snapshot, or original) so the weights are exactly as before the call.
// Untouched-by-both tensors are never written. The snapshot costs memory
// only for tensors that are patched now and touched again, only during the
// call.
//
// It does not parse adapters (the plugin does) and does not lock out
// generations: never patch while a generation reads the weights.
package host

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// PatchTarget is one model tensor a weight patcher may write.
type PatchTarget struct {
	Name  string    // canonical checkpoint key
	Data  []float32 // live values, inside a plugin-writable arena
	Shape []int
	// Restore writes the original values into dst (bit-exact), e.g.
	// safetensors.Tensor.Float32Into from the mmap'd checkpoint.
	Restore func(dst []float32) error
}

// WeightPatch tracks which tensors of a model hold a patch.
type WeightPatch struct {
	targets map[string]*PatchTarget
	refs    map[string]sdk.TensorRef
	model   []sdk.TensorInfo
	patched map[string]bool
}

// NewWeightPatch checks every target lies in a plugin-writable arena.
func NewWeightPatch(targets []*PatchTarget) (*WeightPatch, error) {
	w := &WeightPatch{targets: map[string]*PatchTarget{}, refs: map[string]sdk.TensorRef{}, patched: map[string]bool{}}
	for _, t := range targets {
		if _, dup := w.targets[t.Name]; dup {
			return nil, fmt.Errorf("patch target %q listed twice", t.Name)
		}
		if t.Restore == nil {
			return nil, fmt.Errorf("patch target %q has no restore source", t.Name)
		}
		ref, err := RefOf(t.Name, t.Data, t.Shape, true)
		if err != nil {
			return nil, fmt.Errorf("patch target: %w", err)
		}
		w.targets[t.Name] = t
		w.refs[t.Name] = ref
		w.model = append(w.model, ref.Info())
	}
	return w, nil
}

// Patched lists the tensors currently holding a patch, sorted.
func (w *WeightPatch) Patched() []string {
	out := make([]string, 0, len(w.patched))
	for n := range w.patched {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// PatchReport says what one Apply did.
type PatchReport struct {
	Touched  []string // tensors the plugin patched
	Restored int      // tensors written back to original (union size)
	Warnings []string
}

// Apply replaces the current patch by the one params describe (e.g. a list
// of LoRA files with strengths): it restores the previous patch's tensors
// and patches the new ones, touching the union once.
func (w *WeightPatch) Apply(ctx context.Context, p *Plugin, params sdk.Params) (*PatchReport, error) {
	plan, err := p.PlanPatch(ctx, &sdk.PlanPatchRequest{Model: w.model, Params: params})
	if err != nil {
		return nil, err
	}
	touched := map[string]bool{}
	for _, n := range plan.Touched {
		if _, ok := w.targets[n]; !ok {
			return nil, fmt.Errorf("plugin %q planned to patch unknown tensor %q", p.Name(), n)
		}
		if touched[n] {
			return nil, fmt.Errorf("plugin %q planned tensor %q twice", p.Name(), n)
		}
		touched[n] = true
	}
	union := map[string]bool{}
	for n := range w.patched {
		union[n] = true
	}
	for n := range touched {
		union[n] = true
	}
	// Snapshot patched tensors we are about to overwrite.
	snap := map[string][]float32{}
	for n := range union {
		if w.patched[n] {
			snap[n] = append([]float32(nil), w.targets[n].Data...)
		}
	}
	rollback := func(cause error) error {
		var errs []error
		for n := range union {
			t := w.targets[n]
			if s, ok := snap[n]; ok {
				copy(t.Data, s)
			} else if err := t.Restore(t.Data); err != nil {
				errs = append(errs, fmt.Errorf("restoring %q: %w", n, err))
			}
		}
		if len(errs) > 0 {
			return errors.Join(append([]error{cause}, errs...)...)
		}
		return cause
	}
	for n := range union {
		t := w.targets[n]
		if err := t.Restore(t.Data); err != nil {
			return nil, rollback(fmt.Errorf("restoring %q: %w", n, err))
		}
	}
	if len(touched) > 0 {
		req := &sdk.PatchWeightsRequest{Params: params}
		for _, n := range plan.Touched {
			req.Tensors = append(req.Tensors, sdk.Ref(w.refs[n]))
		}
		if _, err := p.PatchWeights(ctx, req); err != nil {
			return nil, rollback(err)
		}
	}
	w.patched = touched
	return &PatchReport{Touched: append([]string(nil), plan.Touched...), Restored: len(union), Warnings: plan.Warnings}, nil
}

// Reset restores every patched tensor to its original values.
func (w *WeightPatch) Reset() error {
	for n := range w.patched {
		t := w.targets[n]
		if err := t.Restore(t.Data); err != nil {
			return fmt.Errorf("restoring %q: %w", n, err)
		}
		delete(w.patched, n)
	}
	return nil
}
