// pipeline_lora.go: LoRA on a pipeline loaded onto a GPU. Weights are
// patched where they are used: the device copies of every model that
// exposes them (the U-Net and the CLIP text encoder) become the LoRA plugin's patch targets
// (DevicePatchTargets: each allocation a plugin-writable device arena,
// restored from a device copy of the original, or read from it by the
// plugin in one pass), so a swap moves only the factors the first time and
// the touched weights never leave the GPU; with SDBRIDGE_DEBUG=1 each swap
// logs the originals' counters. A model whose CUDA
// type has no per-weight view would be patched on the host and re-uploaded
// (SyncDevice). It does not change the CPU path
// (modelstore.go) and does not patch the VAE.
package host

import (
	"context"
	"errors"
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// deviceWeighter is a device model that exposes the device copy of each
// CPU weight (models.UNetCUDA).
type deviceWeighter interface {
	DeviceWeight(t *nn.Tensor) *nn.GPUTensor
}

// patchOnDevice makes the patchable store's targets the device copies of
// every device model that exposes them (deviceWeighter: the U-Net and the
// text encoder), so the LoRA plugin patches those
// in place. Call it once, after toDevice and before any ApplyLoRAs.
func (l *Loaded) patchOnDevice() error {
	s := l.store
	if s == nil || l.device == nil {
		return nil
	}
	type owner struct {
		t   *nn.Tensor
		gpu deviceWeighter
	}
	byData := map[*float32]owner{}
	var patched []int // indexes of the copies patched on the device
	for i, m := range l.device.copies {
		gpu, ok := m.(deviceWeighter)
		if !ok {
			continue
		}
		patched = append(patched, i)
		for _, t := range weightTensors(l.device.weights[i]) {
			if len(t.Data) > 0 {
				byData[&t.Data[0]] = owner{t, gpu}
			}
		}
	}
	if len(patched) == 0 {
		return nil
	}
	set := NewDeviceArenaSet("device weights", true)
	var missing string
	targets, err := DevicePatchTargets(s.targets, set, func(pt *PatchTarget) *nn.GPUTensor {
		if len(pt.Data) == 0 {
			return nil
		}
		o, ok := byData[&pt.Data[0]]
		if !ok {
			return nil // a weight of a model patched on the host
		}
		w := o.gpu.DeviceWeight(o.t)
		if w == nil && missing == "" {
			missing = pt.Name
		}
		return w
	})
	if err == nil && missing != "" {
		err = fmt.Errorf("weight %q has no device copy", missing)
	}
	if err == nil {
		var patch *WeightPatch
		if patch, err = NewWeightPatch(targets); err == nil {
			patch.onSwap = func() { s.logOriginals(set) }
			s.patch = patch
		}
	}
	if err != nil {
		set.Close()
		return fmt.Errorf("device weights as LoRA targets: %w", err)
	}
	l.device.patchSet = set
	for _, i := range patched {
		l.device.onDevicePatch[i] = true
	}
	return nil
}

// logOriginals logs, at debug level (SDBRIDGE_DEBUG=1), what the device
// originals of set did so far: one line after each swap.
func (s *modelStore) logOriginals(set *DeviceArenaSet) {
	o := DeviceOriginalsOf(set)
	if s.sup == nil || o == nil {
		return
	}
	s.sup.log.Debug("LoRA swap on the device", "originals", o.Stats().String())
}

// closePatchSet has the plugins that patched the device weights unmap
// them and their device originals (read by one-pass patches), then
// unregisters the weights and frees the originals (before the device
// copies are freed).
func (l *Loaded) closePatchSet() error {
	if l.device == nil || l.device.patchSet == nil {
		return nil
	}
	set := l.device.patchSet
	var errs []error
	if l.store != nil && l.store.sup != nil {
		arenas := set.Arenas()
		if o := DeviceOriginalsOf(set); o != nil {
			arenas = append(arenas, o.Arenas()...)
		}
		errs = append(errs, l.store.sup.Unmap(context.Background(), arenas...))
	}
	set.Close()
	errs = append(errs, CloseDeviceOriginals(set))
	l.device.patchSet = nil
	return errors.Join(errs...)
}

// LoRATargets counts the weights LoRAs patch on the device and on the host
// (the host ones of a GPU pipeline are re-uploaded after each patch); both
// are 0 unless the pipeline was loaded with LoadOptions.Patchable.
func (l *Loaded) LoRATargets() (onDevice, onHost int) {
	if l.store == nil || l.store.patch == nil {
		return 0, 0
	}
	for _, t := range l.store.patch.targets {
		if t.Device != nil {
			onDevice++
		} else {
			onHost++
		}
	}
	return onDevice, onHost
}
