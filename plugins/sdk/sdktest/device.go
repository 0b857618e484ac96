// device.go: device arenas in the test harness. NewDeviceArena hands the
// plugin one device allocation by its CUDA IPC handle, as the host does for
// model weights on the GPU; Tensor describes a range of it. With the
// stand-in driver (cuda/cudatest) this runs on any machine; the handle is
// opened in the same process, which the stand-in allows.
package sdktest

import (
	"context"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// DeviceArena is one device allocation the plugin opened as an arena.
type DeviceArena struct {
	ID       uint32
	Buf      *cuda.Buffer // the whole allocation (the host's)
	Writable bool
	used     int
}

// NewDeviceArena exports buf (a whole cuMemAlloc allocation) and has the
// plugin open it as a device arena, read-write if pluginWritable.
func (h *Harness) NewDeviceArena(buf *cuda.Buffer, pluginWritable bool) *DeviceArena {
	h.t.Helper()
	handle, err := buf.IPCHandle()
	if err != nil {
		h.t.Fatalf("sdktest: exporting a device arena: %v", err)
	}
	id := h.nextID
	h.nextID++
	if err := h.Remote.MapDeviceArena(context.Background(), id, uint64(buf.Size), pluginWritable, handle, buf.Device().Ordinal); err != nil {
		h.t.Fatalf("MapDeviceArena %d: %v", id, err)
	}
	return &DeviceArena{ID: id, Buf: buf, Writable: pluginWritable}
}

// Tensor reserves the next 256-byte-aligned range of the arena for a
// tensor of dtype and shape and returns its unbound ref (the host side);
// fill and read it through a.Buf at the ref's offset.
func (a *DeviceArena) Tensor(t testing.TB, name string, dtype sdk.DType, shape ...int) *sdk.Tensor {
	t.Helper()
	ref := sdk.TensorRef{Name: name, Arena: a.ID, DType: dtype, Shape: shape, Writable: a.Writable}
	n, err := ref.ByteLen()
	if err != nil {
		t.Fatal(err)
	}
	off := (a.used + 255) &^ 255
	if off+int(n) > a.Buf.Size {
		t.Fatalf("sdktest: device arena %d full (%d of %d bytes used, need %d)", a.ID, a.used, a.Buf.Size, n)
	}
	a.used = off + int(n)
	ref.Offset = uint64(off)
	return sdk.Ref(ref)
}
