// plugin_patch_device.go: weight patching on the GPU. A PatchTarget with
// Device set names the weight's copy in device memory (in a registered
// device arena, arena_device.go); WeightPatch then grants the plugin a
// device ref, restores the weight (restore, never subtract: bit-exact like
// the CPU path) and the plugin merges on the device
// (plugins/lora/device.go). DevicePatchTargets restores from a copy of the
// original kept on the device (plugin_patch_device_orig.go: one queued
// device-to-device copy per weight, the swap budget is written there),
// falling back to an upload of the host's copy when the device is short of
// memory; once a weight has its device original, a plugin that reads
// originals gets it as an input and writes the weight in one pass
// (plugin_patch.go), so the host restores nothing. The plugin must take
// device arenas (protocol minor 2); an older one fails the patch with an
// error saying so, and the weights stay as they were.
//
// It does not allocate or free device weights (the model's GPU copy owns
// them).
package host

import (
	"fmt"
	"sync"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

// DeviceWeight is a patch target's copy on a GPU.
type DeviceWeight struct {
	Buf   *cuda.Buffer // the weight's device memory (whole allocation or view), in a device arena
	DType sdk.DType    // F32 or F16
	// Restore writes the original values into Buf, e.g. RestoreFromHost.
	Restore func() error
	// Original, when set, returns a read-only device ref (same dtype and
	// shape) to a copy of the original values once one exists (ok false
	// before), for plugins that read originals themselves.
	Original func() (ref sdk.TensorRef, ok bool, err error)
}

// ref is the writable device ref of the weight.
func (d *DeviceWeight) ref(name string, shape []int) (sdk.TensorRef, error) {
	if d.DType != sdk.F32 && d.DType != sdk.F16 {
		return sdk.TensorRef{}, fmt.Errorf("device weight %q is %s, want F32 or F16", name, d.DType)
	}
	if d.Restore == nil {
		return sdk.TensorRef{}, fmt.Errorf("device weight %q has no restore source", name)
	}
	return DeviceRefOf(name, d.Buf, d.DType, shape, true)
}

// RestoreFromHost returns a Restore that uploads host (the original
// float32 values, e.g. the CPU model's weight) into buf in dtype: F32 as
// is; F16 rounded to nearest even (as the GPU model's upload does) once, on
// the first restore, and kept (2 bytes per value) so later restores are a
// plain copy.
func RestoreFromHost(buf *cuda.Buffer, dtype sdk.DType, host []float32) func() error {
	var half []uint16
	var once sync.Once
	return func() error {
		switch dtype {
		case sdk.F32:
			return buf.UploadFloat32(host)
		case sdk.F16:
			once.Do(func() {
				half = make([]uint16, len(host))
				for i, v := range host {
					half[i] = safetensors.F32ToF16(v)
				}
			})
			return buf.UploadUint16(half)
		}
		return fmt.Errorf("restoring a device weight: dtype %s (want F32 or F16)", dtype)
	}
}

// DevicePatchTargets moves patch targets onto the GPU: for each target
// whose weight has a device copy (weight returns it, or nil to keep the
// target on the host), the returned target patches that copy in place
// (its allocation registered in set, plugin-writable) and restores it from
// a device copy of the target's Data (the host's unpatched values, in the
// copy's dtype), made on the first restore (DeviceOriginals, no cap but
// DefaultOriginalsReserve of free memory; short of memory, from Data over
// PCIe). The host copies must then stay unpatched (patch the device or the
// host, not both). Targets without a device copy are returned as they are.
// Before freeing the device weights, Unmap set.Arenas() from every plugin
// that patched them, with DeviceOriginalsOf(set).Arenas() (the originals
// those plugins read), then Close the set and CloseDeviceOriginals(set).
func DevicePatchTargets(targets []*PatchTarget, set *DeviceArenaSet, weight func(t *PatchTarget) *nn.GPUTensor) ([]*PatchTarget, error) {
	out, err := DevicePatchTargetsWith(targets, set, weight, func(dev *cuda.Device) *DeviceOriginals {
		origs := originalsFor(set, dev)
		if origs.dev != dev {
			return nil // one device per set keeps originals; others restore from the host
		}
		return origs
	})
	return out, err
}

// DevicePatchTargetsWith is DevicePatchTargets with the originals of the
// weights on device dev kept in origs(dev); origs nil, or returning nil,
// restores from the host copy each time (RestoreFromHost).
func DevicePatchTargetsWith(targets []*PatchTarget, set *DeviceArenaSet, weight func(t *PatchTarget) *nn.GPUTensor, origs func(dev *cuda.Device) *DeviceOriginals) ([]*PatchTarget, error) {
	if !set.PluginWritable {
		return nil, fmt.Errorf("device patch targets: arena set %q is read-only for plugins", set.Name)
	}
	out := make([]*PatchTarget, 0, len(targets))
	for _, t := range targets {
		w := weight(t)
		if w == nil {
			out = append(out, t)
			continue
		}
		if w.Numel() != len(t.Data) {
			return nil, fmt.Errorf("patch target %q: device copy %v holds %d values, the host weight %d", t.Name, w.Shape, w.Numel(), len(t.Data))
		}
		if err := set.Add(w.Buf); err != nil {
			return nil, fmt.Errorf("patch target %q: %w", t.Name, err)
		}
		dt := sdk.F32
		if w.DType == nn.GPUF16 {
			dt = sdk.F16
		}
		dw := &DeviceWeight{Buf: w.Buf, DType: dt, Restore: RestoreFromHost(w.Buf, dt, t.Data)}
		if origs != nil {
			if o := origs(w.Buf.Device()); o != nil {
				name, shape := t.Name, t.Shape
				dw.Restore = o.Restore(name, w.Buf, dt, t.Data)
				dw.Original = func() (sdk.TensorRef, bool, error) { return o.Original(name, dt, shape) }
			}
		}
		out = append(out, &PatchTarget{Name: t.Name, Shape: t.Shape, Data: t.Data, Device: dw})
	}
	return out, nil
}
