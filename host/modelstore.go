// modelstore.go keeps a loaded checkpoint's U-Net and CLIP text-encoder
// weights where the LoRA plugin can patch them in place: float32 tensors in
// plugin-writable shared arenas, a WeightPatch over every one of them whose
// restore source is the mmap'd checkpoint tensor (so the checkpoint stays
// open until Loaded.Close). The checkpoint is also shared read-only with the
// plugin (CheckpointArena), so a LoRA patches each touched tensor in one
// pass from its stored bytes (plugin_patch.go). Loaded.ApplyLoRAs is the
// whole API:
//
//	p, _ := host.LoadPipeline(ckpt, host.LoadOptions{Patchable: true, ...})
//	defer p.Close()                       // before sup.Close
//	err := p.ApplyLoRAs(ctx, sup, []host.LoRASpec{{Path: "a.safetensors", UNet: 0.8, TE: 0.5}})
//	err = p.ApplyLoRAs(ctx, sup, []host.LoRASpec{{Path: "b.safetensors", UNet: 1, TE: 1}}) // swap
//	err = p.ApplyLoRAs(ctx, sup, nil)     // back to the checkpoint's weights
//
// The VAE stays in private memory (no plugin patches it). It does not parse
// LoRA files (the plugin does) and does not lock out generations: never
// apply LoRAs while a generation runs on the same Loaded.
package host

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

// LoRASpec is one adapter with its strengths: what `--lora FILE:0.8:te=0.5`
// parses to (ParseMergeLoRA). Blocks is a 17- or 26-value lora-block-weight
// vector (ParseBlockWeights); nil means 1 everywhere.
type LoRASpec = MergeLoRA

// modelArenaChunk is the size of each shared weight arena (a real SD1.5
// U-Net is about 3.4 GB of float32, so about 14 arenas).
const modelArenaChunk = 256 << 20

// modelStore is the patchable part of a Loaded.
type modelStore struct {
	pool    *ArenaPool
	ckpt    *safetensors.File // mapped while the store lives: every Restore reads it
	orig    *Arena            // ckpt shared read-only with plugins, nil if it could not be
	views   map[*PatchTarget]safetensors.Tensor
	targets []*PatchTarget
	patch   *WeightPatch
	sup     *Supervisor   // the supervisor of the last ApplyLoRAs (unmapped on Close)
	loras   []LoRASpec    // the adapters in place
	layers  []*patchLayer // third-party weight patches on top (plugin_generic_patch.go)
}

// recordingSource passes a checkpoint through to models.Weights and pairs
// each tensor Weights reads with the float32 slice it allocates for it
// (Weights.Tensor calls Get, then alloc, then Float32Into, one tensor at a
// time), so every bound tensor becomes a PatchTarget.
type recordingSource struct {
	models.Source
	pool    *ArenaPool
	pending *safetensors.Tensor
	targets *[]*PatchTarget
	views   map[*PatchTarget]safetensors.Tensor
	err     error
}

func (r *recordingSource) Get(name string) (safetensors.Tensor, error) {
	t, err := r.Source.Get(name)
	if err == nil {
		r.pending = &t
	}
	return t, err
}

// alloc is the Weights allocator: arena memory for the tensor just read.
func (r *recordingSource) alloc(n int) []float32 {
	t := r.pending
	r.pending = nil
	if t == nil || t.Numel() != n {
		if r.err == nil {
			r.err = fmt.Errorf("patchable weights: an allocation of %d values matches no tensor read", n)
		}
		return make([]float32, n)
	}
	data := r.pool.AllocFloat32(n)
	if n > 0 {
		pt := &PatchTarget{Name: t.Name, Data: data, Shape: t.Shape, Restore: t.Float32Into}
		*r.targets = append(*r.targets, pt)
		r.views[pt] = *t
	}
	return data
}

// patchableWeights returns Weights over f whose tensors land in the
// store's arenas and are recorded as patch targets.
func (s *modelStore) patchableWeights(f models.Source) (*models.Weights, *recordingSource) {
	if s.views == nil {
		s.views = map[*PatchTarget]safetensors.Tensor{}
	}
	rs := &recordingSource{Source: f, pool: s.pool, targets: &s.targets, views: s.views}
	w := models.NewWeights(rs)
	w.SetAlloc(rs.alloc)
	return w, rs
}

// seal checks the arenas and builds the WeightPatch once every model is bound.
func (s *modelStore) seal(sources ...*recordingSource) error {
	for _, rs := range sources {
		if rs.err != nil {
			return rs.err
		}
	}
	if err := s.pool.Err(); err != nil {
		return fmt.Errorf("patchable weights: %w", err)
	}
	seen := map[string]bool{}
	for _, t := range s.targets {
		if seen[t.Name] {
			return fmt.Errorf("patchable weights: tensor %q is bound twice (a LoRA could patch only one copy)", t.Name)
		}
		seen[t.Name] = true
	}
	// One-pass patching where the plugin can read the stored originals;
	// without the checkpoint arena every patch restores first.
	if a, err := CheckpointArena(s.ckpt); err == nil {
		s.orig = a
		for _, t := range s.targets {
			if ref, ok := OriginalRef(a, s.views[t]); ok {
				t.Original = &ref
			}
		}
	}
	s.views = nil
	var err error
	s.patch, err = NewWeightPatch(s.targets)
	return err
}

// close drops the plugins' mappings of the arenas, frees them and unmaps
// the checkpoint.
func (s *modelStore) close() error {
	var errs []error
	arenas := s.pool.Arenas()
	if s.orig != nil {
		arenas = append(arenas, s.orig)
	}
	if s.sup != nil {
		errs = append(errs, s.sup.Unmap(context.Background(), arenas...))
	}
	errs = append(errs, s.pool.Close())
	if s.orig != nil {
		errs = append(errs, s.orig.Close())
	}
	errs = append(errs, s.ckpt.Close())
	return errors.Join(errs...)
}

// BuiltinPlugin returns sup's plugin name, registering the built-in one
// (this binary re-run as `sdbridge plugin NAME`) if none is registered;
// tests register their own process under the name first.
func BuiltinPlugin(sup *Supervisor, name string) (*Plugin, error) {
	if p, err := sup.Get(name); err == nil {
		return p, nil
	}
	spec, err := BuiltinSpec(name)
	if err != nil {
		return nil, err
	}
	return sup.Register(spec)
}

// loraParams turns adapters into the LoRA plugin's parameters
// (plugins/lora/serve.go): lora=PATH unet=X te=X [blocks=V,...] each.
func loraParams(loras []LoRASpec) sdk.Params {
	f := func(x float64) string { return strconv.FormatFloat(x, 'g', -1, 64) }
	var ps sdk.Params
	for _, l := range loras {
		ps = append(ps, sdk.Param{Name: "lora", Value: l.Path}, sdk.Param{Name: "unet", Value: f(l.UNet)}, sdk.Param{Name: "te", Value: f(l.TE)})
		if len(l.Blocks) > 0 {
			b := make([]string, len(l.Blocks))
			for i, v := range l.Blocks {
				b[i] = f(v)
			}
			ps = append(ps, sdk.Param{Name: "blocks", Value: strings.Join(b, ",")})
		}
	}
	return ps
}

// ApplyLoRAs makes the U-Net and text-encoder weights the checkpoint's plus
// loras (all summed, through sup's "lora" plugin process, in place in the
// shared arenas). It replaces whatever adapters were applied before,
// touching the union of old and new tensors once; a nil or empty list
// restores the checkpoint's weights. On error (a file that does not apply,
// a LoRA for SDXL, a crashed plugin) the weights are as before the call.
// The pipeline must have been loaded with LoadOptions.Patchable; pass the
// same sup every time (Close has its plugins unmap the arenas).
func (l *Loaded) ApplyLoRAs(ctx context.Context, sup *Supervisor, loras []LoRASpec) (err error) {
	s := l.store
	if s == nil {
		return errors.New("apply LoRAs: the pipeline was not loaded with LoadOptions.Patchable")
	}
	// Plugin patch layers sit on top: take them off, put them back after.
	if err := s.resetLayers(); err != nil {
		return fmt.Errorf("apply LoRAs: %w", err)
	}
	defer func() {
		if rerr := s.reapplyLayers(context.WithoutCancel(ctx)); rerr != nil {
			err = errors.Join(err, fmt.Errorf("apply LoRAs: %w", rerr))
		}
	}()
	if len(loras) == 0 {
		if err := s.patch.Reset(); err != nil {
			return fmt.Errorf("restoring the checkpoint's weights: %w", err)
		}
		s.loras = nil
		return nil
	}
	if sup == nil {
		return errors.New("apply LoRAs: no plugin supervisor")
	}
	plug, err := BuiltinPlugin(sup, "lora")
	if err != nil {
		return err
	}
	s.sup = sup
	if _, err := s.patch.Apply(ctx, plug, loraParams(loras)); err != nil {
		names := make([]string, len(loras))
		for i, x := range loras {
			names[i] = x.Path
		}
		return fmt.Errorf("applying LoRA %s: %w", strings.Join(names, ", "), err)
	}
	s.loras = append([]LoRASpec(nil), loras...)
	return nil
}

// LoRAs lists the adapters currently applied (nil when none).
func (l *Loaded) LoRAs() []LoRASpec {
	if l.store == nil {
		return nil
	}
	return append([]LoRASpec(nil), l.store.loras...)
}

// Release forwards to the checkpoint, so its pages are dropped from memory
// once a tensor is widened into the arena (they are read again on restore).
func (r *recordingSource) Release(name string) {
	if rel, ok := r.Source.(models.Releaser); ok {
		rel.Release(name)
	}
}
