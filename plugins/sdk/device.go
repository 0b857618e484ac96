// device.go: the plugin side of device arenas (protocol minor 2). A device
// arena is one cuMemAlloc allocation of the host, exported with a legacy
// CUDA IPC handle; MapArena of kind CUDA_IPC opens the handle once in the
// plugin's own context (on the process's device for that ordinal, shared
// with the plugin's own GPU work through CUDADevice) and binds later refs
// to views of it, so a Tensor is either host bytes or a device buffer.
//
// Synchronisation: the host finishes its writes before the call; the SDK
// synchronises the device stream of every device tensor of a call after
// the plugin's hook returns and before the reply is sent, so work a
// plugin queued on that device (nn.GPU built on CUDADevice) is complete
// when the host reads. A plugin using streams of its own must synchronise
// them itself before returning.
//
// It does not create device arenas (host/arena.go), convert dtypes or
// protect read-only device tensors from writes (IPC mappings are always
// read-write; the host checks reported writes against its grants).
package sdk

import (
	"errors"
	"fmt"
	"sync"

	"github.com/sdbridge/sdbridge/cuda"
)

// CapDeviceArenas is the capability a plugin lists in Describe to receive
// device arenas (minor 2): its hooks accept Tensors with OnDevice true.
// Plugins without it only ever get host-memory arenas.
const CapDeviceArenas Capability = "device_arenas"

// ErrOnDevice is returned by the host-memory views of a device tensor.
var ErrOnDevice = errors.New("tensor is in device memory (use DeviceBuffer)")

var devices struct {
	mu sync.Mutex
	m  map[int]*cuda.Device
}

// CUDADevice returns this process's CUDA device for ordinal, opening it on
// first use; device arenas are opened on it, so a plugin computing on the
// tensors it is given should build its nn.GPU on the same device (one
// context, one stream). It stays open for the life of the process.
func CUDADevice(ordinal int) (*cuda.Device, error) {
	devices.mu.Lock()
	defer devices.mu.Unlock()
	if d, ok := devices.m[ordinal]; ok {
		return d, nil
	}
	d, err := cuda.Open(ordinal)
	if err != nil {
		return nil, fmt.Errorf("sdk: opening CUDA device %d for device arenas: %w", ordinal, err)
	}
	if devices.m == nil {
		devices.m = map[int]*cuda.Device{}
	}
	devices.m[ordinal] = d
	return d, nil
}

// BindDeviceTensor binds ref to buf, the whole device allocation of its
// arena (ref.Offset is relative to buf's start). It checks bounds and
// alignment.
func BindDeviceTensor(ref TensorRef, buf *cuda.Buffer) (*Tensor, error) {
	if err := ref.CheckBounds(uint64(buf.Size)); err != nil {
		return nil, err
	}
	n, _ := ref.ByteLen()
	if n == 0 {
		return nil, fmt.Errorf("tensor %q: empty device tensors cannot be shared", ref.Name)
	}
	v, err := buf.Slice(int(ref.Offset), int(n))
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", ref.Name, err)
	}
	return &Tensor{TensorRef: ref, dev: v}, nil
}

// OnDevice reports whether the tensor lives in a device arena.
func (t *Tensor) OnDevice() bool { return t != nil && t.dev != nil }

// DeviceBuffer is the tensor's bytes in device memory (a view: do not Free
// it). Write it only when Writable (MutableDeviceBuffer checks).
func (t *Tensor) DeviceBuffer() (*cuda.Buffer, error) {
	if t.dev == nil {
		return nil, fmt.Errorf("tensor %q is in host memory, not on a device", t.Name)
	}
	return t.dev, nil
}

// MutableDeviceBuffer is DeviceBuffer for a tensor granted writable.
func (t *Tensor) MutableDeviceBuffer() (*cuda.Buffer, error) {
	if !t.Writable {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, ErrReadOnly)
	}
	return t.DeviceBuffer()
}

// syncDevices waits for the stream of every distinct device holding one of
// ts (nil entries skipped), so the plugin's writes are done before a reply.
func syncDevices(ts ...[]*Tensor) error {
	var seen []*cuda.Device
	for _, list := range ts {
		for _, t := range list {
			if !t.OnDevice() {
				continue
			}
			d := t.dev.Device()
			dup := false
			for _, s := range seen {
				dup = dup || s == d
			}
			if dup {
				continue
			}
			seen = append(seen, d)
			if err := d.Synchronize(); err != nil {
				return fmt.Errorf("synchronising %s after the plugin's work on %q: %w", d, t.Name, err)
			}
		}
	}
	return nil
}
