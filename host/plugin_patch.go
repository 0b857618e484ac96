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
// One pass: when the plugin's plan says ReadsOriginals and a touched target
// has a file-backed Original (a read-only ref into the mapped checkpoint,
// plugin_originals.go), the host does not restore it first; the plugin gets
// the original bytes as a read-only input of the same name and writes
// widen(original) + delta straight into the weight. Tensors patched before
// but not touched now are still restored by the host.
//
// Atomicity (chosen design: restore and replay). A plan that is refused
// writes nothing. If the plugin fails after writes began (error, invalid
// refs, crash, hang), the host restores every tensor of the union from the
// checkpoint and re-applies the previous patch (same parameters, a
// restarted plugin if needed); merging is deterministic from the originals,
// so the weights end bit-exactly as before the call. This costs nothing on
// success, unlike snapshots (1.4 GB of float32 for an attention LoRA on
// SD1.5) or scratch buffers. If the replay fails too, the weights are left at
// the checkpoint's originals and the error says so.
//
// Weights on a GPU (PatchTarget.Device) take the same path with device
// refs: the host restores them from its own copy, the plugin patches them
// in place on the device (plugin_patch_device.go). One pass works there
// too: once a device weight has a device original
// (DeviceWeight.Original, plugin_patch_device_orig.go, made by its first
// restore), a plugin that ReadsOriginals gets that original's read-only
// device ref as the input and the host does not restore the weight first.
//
// It does not parse adapters (the plugin does) and does not lock out
// generations: never patch while a generation reads the weights.
package host

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"sync"

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
	// Original optionally locates the same original values, as stored
	// (F16, BF16 or F32, same element count), read-only in a live arena
	// (OriginalRef); it must widen to exactly what Restore writes. A plugin
	// that ReadsOriginals then patches this tensor in one pass.
	Original *sdk.TensorRef
	// Device, when set, makes the target the weight's copy on a GPU (in a
	// registered device arena, plugin_patch_device.go): the plugin patches
	// it there, Device.Restore restores it, and Data and Restore above may
	// be nil. Original is then not used (Device.Original is).
	Device *DeviceWeight
}

// WeightPatch tracks which tensors of a model hold a patch.
type WeightPatch struct {
	targets map[string]*PatchTarget
	refs    map[string]sdk.TensorRef
	model   []sdk.TensorInfo
	patched map[string]bool

	// last is the patch in place, replayed after a failed Apply.
	lastPlugin *Plugin
	lastParams sdk.Params

	// onSwap, when set, runs after each successful Apply and Reset (the
	// GPU pipeline logs its device originals' counters there).
	onSwap func()
}

// NewWeightPatch checks every target lies in a plugin-writable arena.
func NewWeightPatch(targets []*PatchTarget) (*WeightPatch, error) {
	w := &WeightPatch{targets: map[string]*PatchTarget{}, refs: map[string]sdk.TensorRef{}, patched: map[string]bool{}}
	for _, t := range targets {
		if _, dup := w.targets[t.Name]; dup {
			return nil, fmt.Errorf("patch target %q listed twice", t.Name)
		}
		if t.Device != nil {
			ref, err := t.Device.ref(t.Name, t.Shape)
			if err != nil {
				return nil, fmt.Errorf("patch target: %w", err)
			}
			w.targets[t.Name] = t
			w.refs[t.Name] = ref
			w.model = append(w.model, ref.Info())
			continue
		}
		if t.Restore == nil {
			return nil, fmt.Errorf("patch target %q has no restore source", t.Name)
		}
		ref, err := RefOf(t.Name, t.Data, t.Shape, true)
		if err != nil {
			return nil, fmt.Errorf("patch target: %w", err)
		}
		if o := t.Original; o != nil {
			switch {
			case o.DType != sdk.F16 && o.DType != sdk.BF16 && o.DType != sdk.F32:
				return nil, fmt.Errorf("patch target %q: original is %s, want F16, BF16 or F32", t.Name, o.DType)
			case o.Writable:
				return nil, fmt.Errorf("patch target %q: original must be read-only", t.Name)
			case sdk.Numel(o.Shape) != len(t.Data):
				return nil, fmt.Errorf("patch target %q: original has shape %v, weight %d values", t.Name, o.Shape, len(t.Data))
			}
			if err := checkRef(*o); err != nil {
				return nil, fmt.Errorf("patch target %q: original: %w", t.Name, err)
			}
		}
		w.targets[t.Name] = t
		w.refs[t.Name] = ref
		w.model = append(w.model, ref.Info())
	}
	return w, nil
}

// PatchReport says what one Apply did.
type PatchReport struct {
	Touched  []string // tensors the plugin patched
	Restored int      // tensors the host wrote back to original first
	OnePass  int      // touched tensors the plugin computed from their originals
	Warnings []string
}

// Apply replaces the current patch by the one params describe (e.g. a list
// of LoRA files with strengths): it restores the previous patch's tensors
// and patches the new ones, touching the union once. On failure the weights
// are as before the call (see the file comment).
func (w *WeightPatch) Apply(ctx context.Context, p *Plugin, params sdk.Params) (*PatchReport, error) {
	rep, wrote, err := w.apply(ctx, p, params)
	if err == nil {
		w.lastPlugin, w.lastParams = p, params
		if w.onSwap != nil {
			w.onSwap()
		}
		return rep, nil
	}
	if !wrote || w.lastPlugin == nil {
		return nil, err
	}
	// Writes began and failed: w.patched is empty (all at originals). Put the
	// previous patch back, even if the caller's ctx is done.
	if _, _, rerr := w.apply(context.WithoutCancel(ctx), w.lastPlugin, w.lastParams); rerr != nil {
		w.lastPlugin, w.lastParams = nil, nil
		return nil, fmt.Errorf("%w; re-applying the previous patch failed too, weights are at the checkpoint's originals: %v", err, rerr)
	}
	return nil, err
}

// apply plans, restores the union and patches. wrote reports whether any
// tensor was written; after an error with wrote, every tensor of the union
// holds its original values and w.patched is empty.
func (w *WeightPatch) apply(ctx context.Context, p *Plugin, params sdk.Params) (rep *PatchReport, wrote bool, err error) {
	plan, err := p.PlanPatch(ctx, &sdk.PlanPatchRequest{Model: w.model, Params: params})
	if err != nil {
		return nil, false, err
	}
	touched := map[string]bool{}
	for _, n := range plan.Touched {
		if _, ok := w.targets[n]; !ok {
			return nil, false, fmt.Errorf("plugin %q planned to patch unknown tensor %q", p.Name(), n)
		}
		if touched[n] {
			return nil, false, fmt.Errorf("plugin %q planned tensor %q twice", p.Name(), n)
		}
		touched[n] = true
	}
	union := touched
	if len(w.patched) > 0 {
		union = maps.Clone(touched)
		maps.Copy(union, w.patched)
	}
	// One pass: touched tensors with an original the plugin reads itself
	// are not restored first.
	req := &sdk.PatchWeightsRequest{Params: params}
	first := union
	if plan.ReadsOriginals {
		for _, n := range plan.Touched {
			in, ok, err := w.targets[n].original()
			if err != nil {
				return nil, false, fmt.Errorf("patch target %q: %w", n, err)
			}
			if !ok {
				continue
			}
			if len(req.Inputs) == 0 {
				first = maps.Clone(union)
			}
			in.Name = n
			req.Inputs = append(req.Inputs, sdk.Ref(in))
			delete(first, n)
		}
	}
	w.patched = map[string]bool{}
	if err := restoreAll(w.targets, first); err != nil {
		return nil, true, err
	}
	if len(touched) > 0 {
		for _, n := range plan.Touched {
			req.Tensors = append(req.Tensors, sdk.Ref(w.refs[n]))
		}
		if _, err := p.PatchWeights(ctx, req); err != nil {
			// The one-pass tensors may hold anything now: restore the union.
			if rerr := restoreAll(w.targets, union); rerr != nil {
				err = errors.Join(err, rerr)
			}
			return nil, true, err
		}
	}
	w.patched = touched
	return &PatchReport{Touched: append([]string(nil), plan.Touched...), Restored: len(first), OnePass: len(req.Inputs), Warnings: plan.Warnings}, true, nil
}

// original returns the read-only ref of t's original values for a one-pass
// patch: the file-backed Original of a host target, or the device original
// of a device target once its first restore made one (ok false: restore
// first).
func (t *PatchTarget) original() (ref sdk.TensorRef, ok bool, err error) {
	if t.Device != nil {
		if t.Device.Original == nil {
			return sdk.TensorRef{}, false, nil
		}
		ref, ok, err = t.Device.Original()
		if err != nil || !ok {
			return sdk.TensorRef{}, false, err
		}
		if ref.Writable || ref.DType != t.Device.DType || sdk.Numel(ref.Shape) != sdk.Numel(t.Shape) {
			return sdk.TensorRef{}, false, fmt.Errorf("device original %s %v (writable=%v) does not match the weight's %s %v", ref.DType, ref.Shape, ref.Writable, t.Device.DType, t.Shape)
		}
		if err := checkOriginal(ref); err != nil {
			return sdk.TensorRef{}, false, err
		}
		return ref, true, nil
	}
	if t.Original == nil {
		return sdk.TensorRef{}, false, nil
	}
	if err := checkOriginal(*t.Original); err != nil {
		return sdk.TensorRef{}, false, err
	}
	return *t.Original, true, nil
}

// checkOriginal checks an original's arena is live and, for a file arena,
// that the file did not shrink under its mapping.
func checkOriginal(o sdk.TensorRef) error {
	a, ok := lookupArena(o.Arena)
	if !ok {
		return fmt.Errorf("original: unknown arena %d", o.Arena)
	}
	if err := checkFileArena(a); err != nil {
		return fmt.Errorf("original: %w", err)
	}
	return o.CheckBounds(uint64(a.Size()))
}

// Reset restores every patched tensor to its original values.
func (w *WeightPatch) Reset() error {
	if err := restoreAll(w.targets, w.patched); err != nil {
		return err
	}
	w.patched = map[string]bool{}
	w.lastPlugin, w.lastParams = nil, nil
	if w.onSwap != nil {
		w.onSwap()
	}
	return nil
}

// restore writes t's original values into its live copy.
func (t *PatchTarget) restore() error {
	if t.Device != nil {
		return t.Device.Restore()
	}
	return t.Restore(t.Data)
}

// restoreAll restores the named targets, spread over the CPUs (each
// Restore writes its own tensor only).
func restoreAll(targets map[string]*PatchTarget, names map[string]bool) error {
	work := make(chan *PatchTarget)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range max(1, runtime.GOMAXPROCS(0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range work {
				if err := t.restore(); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("restoring %q: %w", t.Name, err))
					mu.Unlock()
				}
			}
		}()
	}
	for n := range names {
		work <- targets[n]
	}
	close(work)
	wg.Wait()
	return errors.Join(errs...)
}
