// pipeline_lora.go: LoRA on a pipeline loaded onto a GPU. Weights are
// patched where they are used: the device copies of every model that
// exposes them (the U-Net and the CLIP text encoder) become the LoRA plugin's patch targets
// (DevicePatchTargets: each allocation a plugin-writable device arena,
// restored from the host's unpatched copy), so a swap moves only the
// factors and the touched weights never leave the GPU. A model whose CUDA
// type has no per-weight view would be patched on the host and re-uploaded
// (SyncDevice). It does not change the CPU path
// (modelstore.go) and does not patch the VAE.
package host

import (
	"context"
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

// closePatchSet has the plugins that patched the device weights unmap
// them, then unregisters them (before the device copies are freed).
func (l *Loaded) closePatchSet() error {
	if l.device == nil || l.device.patchSet == nil {
		return nil
	}
	var err error
	if l.store != nil && l.store.sup != nil {
		err = l.store.sup.Unmap(context.Background(), l.device.patchSet.Arenas()...)
	}
	l.device.patchSet.Close()
	l.device.patchSet = nil
	return err
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
