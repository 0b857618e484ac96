// plugin_generic_patch.go: third-party WeightPatcher plugins on a
// patchable pipeline, applied on top of the LoRAs. Each plugin is one
// patch layer: a WeightPatch (plugin_patch.go: plan, restore the union,
// patch in place, restore-and-replay on failure) over the same arena
// tensors the LoRAs patch, whose restore source is not the checkpoint but a
// snapshot of the tensor taken the first time the layer restores it, that
// is just before its first write: the values of the layers below (the
// checkpoint plus LoRAs). Only the tensors a layer touches are copied.
//
// Loaded.ApplyPatchPlugins replaces the layers (the old ones are restored,
// top first); ApplyLoRAs restores the layers before it patches and
// re-applies them after (fresh snapshots), so the stack stays checkpoint,
// LoRAs, plugins in order. It runs on the CPU path only: a pipeline whose
// weights are patched on a GPU refuses it. It does not parse adapters (the
// plugin does) and does not lock out generations.
package host

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// patchLayer is one WeightPatcher plugin's patch over the store's targets.
type patchLayer struct {
	plugin *Plugin
	params sdk.Params
	patch  *WeightPatch

	mu    sync.Mutex           // Restore runs concurrently (restoreAll)
	snaps map[string][]float32 // values below this layer, per touched tensor
}

// newPatchLayer makes a layer over base (host targets only).
func newPatchLayer(base []*PatchTarget, p *Plugin, params sdk.Params) (*patchLayer, error) {
	l := &patchLayer{plugin: p, params: params, snaps: map[string][]float32{}}
	targets := make([]*PatchTarget, 0, len(base))
	for _, t := range base {
		if t.Device != nil {
			return nil, fmt.Errorf("plugin %q: weight %q is patched on the GPU; third-party weight patchers run on the CPU path only", p.Name(), t.Name)
		}
		name := t.Name
		targets = append(targets, &PatchTarget{Name: name, Data: t.Data, Shape: t.Shape, Restore: func(dst []float32) error {
			return l.restore(name, dst)
		}})
	}
	var err error
	if l.patch, err = NewWeightPatch(targets); err != nil {
		return nil, fmt.Errorf("plugin %q: %w", p.Name(), err)
	}
	return l, nil
}

// restore writes the snapshot of name into dst (the live tensor); the
// first call for a tensor takes the snapshot and leaves dst as it is.
func (l *patchLayer) restore(name string, dst []float32) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.snaps[name]
	if !ok {
		l.snaps[name] = slices.Clone(dst) // [numel] below this layer
		return nil
	}
	if len(s) != len(dst) {
		return fmt.Errorf("snapshot of %q has %d values, tensor %d", name, len(s), len(dst))
	}
	copy(dst, s)
	return nil
}

// apply patches the layer (from the values below it).
func (l *patchLayer) apply(ctx context.Context) (*PatchReport, error) {
	rep, err := l.patch.Apply(ctx, l.plugin, l.params)
	if err != nil {
		return nil, fmt.Errorf("plugin %q: %w", l.plugin.Name(), err)
	}
	return rep, nil
}

// reset restores the tensors below the layer and drops the snapshots
// (the layers below may change next).
func (l *patchLayer) reset() error {
	if err := l.patch.Reset(); err != nil {
		return fmt.Errorf("plugin %q: restoring its tensors: %w", l.plugin.Name(), err)
	}
	l.snaps = map[string][]float32{}
	return nil
}

// PatchPluginUse is one WeightPatcher plugin with its parameters.
type PatchPluginUse struct {
	Plugin *Plugin
	Params sdk.Params
}

// ApplyPatchPlugins makes the plugins' patches, in order, the layers on top
// of the checkpoint and LoRAs, replacing the previous layers (nil: none).
// The pipeline must be loaded with LoadOptions.Patchable, on the CPU path.
// On error the layers applied so far stay and the failed one is left out
// (its tensors as before it, see WeightPatch.Apply); the error names the
// plugin. Returns the tensors each plugin patched.
func (l *Loaded) ApplyPatchPlugins(ctx context.Context, sup *Supervisor, uses []PatchPluginUse) ([]*PatchReport, error) {
	s := l.store
	if s == nil {
		return nil, errors.New("plugin weight patch: the pipeline was not loaded with LoadOptions.Patchable")
	}
	if l.device != nil {
		return nil, errors.New("plugin weight patch: third-party weight patchers run on the CPU path only (--device cpu)")
	}
	if err := s.resetLayers(); err != nil {
		return nil, err
	}
	s.layers = nil
	if len(uses) > 0 {
		if sup == nil {
			return nil, errors.New("plugin weight patch: no plugin supervisor")
		}
		s.sup = sup
	}
	var reps []*PatchReport
	for _, u := range uses {
		layer, err := newPatchLayer(s.targets, u.Plugin, u.Params)
		if err != nil {
			return reps, err
		}
		rep, err := layer.apply(ctx)
		if err != nil {
			return reps, err
		}
		s.layers = append(s.layers, layer)
		reps = append(reps, rep)
	}
	return reps, nil
}

// resetLayers restores every layer's tensors, top first; the layers stay
// listed (reapplyLayers puts them back).
func (s *modelStore) resetLayers() error {
	for i := len(s.layers) - 1; i >= 0; i-- {
		if err := s.layers[i].reset(); err != nil {
			return err
		}
	}
	return nil
}

// reapplyLayers applies the listed layers again, bottom first, after the
// LoRAs changed; a layer that fails now is dropped and named.
func (s *modelStore) reapplyLayers(ctx context.Context) error {
	var kept []*patchLayer
	var errs []error
	for _, l := range s.layers {
		if _, err := l.apply(ctx); err != nil {
			errs = append(errs, fmt.Errorf("re-applying after the LoRA change (dropped): %w", err))
			continue
		}
		kept = append(kept, l)
	}
	s.layers = kept
	return errors.Join(errs...)
}
