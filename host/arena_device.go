// arena_device.go: device arenas, the GPU counterpart of memfd arenas. A
// device arena is one whole cuMemAlloc allocation (a model's weight, a
// residual buffer, an arena block of the device allocator) registered
// under an arena id and exported with a legacy CUDA IPC handle, which
// plugin.go sends to plugins that take device arenas (protocol minor 2);
// DeviceRefOf turns a device buffer (or a view into one) back into a
// TensorRef, as RefOf does for host slices.
//
// The arena does not own its allocation: Close only unregisters it, and
// the owner frees the memory after every plugin unmapped it (Plugin.Unmap),
// since legacy IPC needs the exporter's allocation alive while importers
// hold it. Synchronisation across processes is the caller's (see
// plugin_device.go).
package host

import (
	"fmt"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// deviceArena is the device side of an Arena: one whole allocation.
type deviceArena struct {
	dev    *cuda.Device
	base   uint64 // the allocation's device address
	size   int
	handle cuda.IPCHandle
	buf    *cuda.Buffer // the allocation as a Buffer when registered whole, else nil
}

// NewDeviceArena registers the device allocation holding buf as an arena
// and exports its IPC handle. buf is the whole allocation, or a view into
// one (an arena-allocated tensor): the allocation is then found with
// cuMemGetAddressRange (Buffer.ExportIPC) and registered whole.
func NewDeviceArena(name string, buf *cuda.Buffer, pluginWritable bool) (*Arena, error) {
	if buf == nil || buf.Ptr == 0 || buf.Size <= 0 {
		return nil, fmt.Errorf("device arena %q: no device buffer", name)
	}
	da := &deviceArena{dev: buf.Device(), base: buf.Ptr, size: buf.Size, buf: buf}
	h, err := buf.IPCHandle()
	if err != nil {
		x, xerr := buf.ExportIPC()
		if xerr != nil {
			return nil, fmt.Errorf("device arena %q: %w (%v)", name, err, xerr)
		}
		h = x.Handle
		da.base, da.size, da.buf = buf.Ptr-uint64(x.Offset), x.AllocSize, nil
	}
	da.handle = h
	id := nextArenaID.Add(1)
	a := &Arena{ID: id, Name: name, PluginWritable: pluginWritable, dev: da}
	arenaMu.Lock()
	arenaByID[id] = a
	arenaMu.Unlock()
	return a, nil
}

// OnDevice reports whether a is a device arena.
func (a *Arena) OnDevice() bool { return a.dev != nil }

// DeviceBuffer is a device arena's allocation when it was registered
// whole (nil for a memfd arena or one registered through a view).
func (a *Arena) DeviceBuffer() *cuda.Buffer {
	if a.dev == nil {
		return nil
	}
	return a.dev.buf
}

// Device is the CUDA device of a device arena (nil for a memfd arena).
func (a *Arena) Device() *cuda.Device {
	if a.dev == nil {
		return nil
	}
	return a.dev.dev
}

// deviceContains reports the byte offset of [p, p+n) on device dev inside
// the device arena a.
func (a *Arena) deviceContains(dev *cuda.Device, p uint64, n int) (uint64, bool) {
	if a.dev == nil || a.dev.dev != dev {
		return 0, false
	}
	base := a.dev.base
	if p < base || p+uint64(n) > base+uint64(a.dev.size) {
		return 0, false
	}
	return p - base, true
}

// DeviceRefOf describes the tensor of dtype and shape starting at buf (a
// whole allocation or a view) as a TensorRef, if it lies in a live device
// arena. writable asks for a write grant, possible only in a
// plugin-writable arena.
func DeviceRefOf(name string, buf *cuda.Buffer, dtype sdk.DType, shape []int, writable bool) (sdk.TensorRef, error) {
	ref := sdk.TensorRef{Name: name, DType: dtype, Shape: append([]int(nil), shape...), Writable: writable}
	n, err := ref.ByteLen()
	if err != nil {
		return sdk.TensorRef{}, err
	}
	if n == 0 {
		return sdk.TensorRef{}, fmt.Errorf("tensor %q: empty tensors cannot be shared", name)
	}
	if buf == nil || int(n) > buf.Size {
		return sdk.TensorRef{}, fmt.Errorf("tensor %q: %d bytes (%s %v) do not fit its device buffer", name, n, dtype, shape)
	}
	arenaMu.RLock()
	defer arenaMu.RUnlock()
	for _, a := range arenaByID {
		off, ok := a.deviceContains(buf.Device(), buf.Ptr, int(n))
		if !ok {
			continue
		}
		if writable && !a.PluginWritable {
			return sdk.TensorRef{}, fmt.Errorf("tensor %q: device arena %d (%s) is read-only for plugins", name, a.ID, a.Name)
		}
		ref.Arena, ref.Offset = a.ID, off
		return ref, nil
	}
	return sdk.TensorRef{}, fmt.Errorf("tensor %q is not in a device arena (register its allocation with NewDeviceArena)", name)
}

// DeviceArenaSet registers device allocations once each, e.g. every
// weight of a model on the GPU (one allocation each, or views into the
// blocks of a device allocator), and unregisters them together.
type DeviceArenaSet struct {
	Name           string
	PluginWritable bool
	byPtr          map[uint64]*Arena // by allocation base
}

// NewDeviceArenaSet makes an empty set.
func NewDeviceArenaSet(name string, pluginWritable bool) *DeviceArenaSet {
	return &DeviceArenaSet{Name: name, PluginWritable: pluginWritable, byPtr: map[uint64]*Arena{}}
}

// Add registers the allocation holding each of bufs (whole or a view)
// unless the set has it already.
func (s *DeviceArenaSet) Add(bufs ...*cuda.Buffer) error {
next:
	for _, b := range bufs {
		if b == nil {
			continue
		}
		if s.byPtr[b.Ptr] != nil {
			continue
		}
		for _, a := range s.byPtr {
			if _, ok := a.deviceContains(b.Device(), b.Ptr, b.Size); ok {
				continue next
			}
		}
		a, err := NewDeviceArena(s.Name, b, s.PluginWritable)
		if err != nil {
			return err
		}
		s.byPtr[a.dev.base] = a
	}
	return nil
}

// Arenas lists the set's arenas (to Unmap them from plugins before Close).
func (s *DeviceArenaSet) Arenas() []*Arena {
	out := make([]*Arena, 0, len(s.byPtr))
	for _, a := range s.byPtr {
		out = append(out, a)
	}
	return out
}

// Close unregisters every arena of the set (the memory stays its owner's).
func (s *DeviceArenaSet) Close() {
	for p, a := range s.byPtr {
		a.Close()
		delete(s.byPtr, p)
	}
}
