// Package sdktest runs a plugin in-process for its author's tests: a real
// gRPC connection (go-plugin's TestPluginGRPCConn), a real side socket and
// real sealed memfd arenas, so a plugin that passes here sees exactly what
// the host sends. It does not start processes or enforce the host's ref
// checks beyond what package sdk does.
package sdktest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"unsafe"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/plugins/sdk/shm"
)

// Harness connects a test to an in-process plugin.
type Harness struct {
	// Remote calls the plugin as the host does.
	Remote *sdk.Remote

	t      testing.TB
	keep   *os.File
	nextID uint32
}

// New serves impl in-process and connects to it; everything is closed when
// the test ends.
func New(t testing.TB, impl sdk.Describer) *Harness {
	t.Helper()
	keep, give, err := shm.SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "sdktest", Level: hclog.Warn})
	ps := map[string]plugin.Plugin{sdk.PluginName: sdk.InProcessPlugin(impl, int(give.Fd()), log)}
	client, server := plugin.TestPluginGRPCConn(t, false, ps)
	raw, err := client.Dispense(sdk.PluginName)
	if err != nil {
		t.Fatal(err)
	}
	r, ok := raw.(*sdk.Remote)
	if !ok {
		t.Fatalf("sdktest: dispensed %T", raw)
	}
	r.AttachSide(keep)
	t.Cleanup(func() {
		client.Close()
		server.Stop()
		keep.Close()
		give.Close()
	})
	return &Harness{Remote: r, t: t, keep: keep, nextID: 1}
}

// Arena is a host-side arena of the harness.
type Arena struct {
	ID       uint32
	Mem      []byte
	Writable bool // mapped writable in the plugin
	used     int
	f        *os.File
}

// NewArena creates a sealed memfd arena of size bytes and has the plugin map
// it (read-write if pluginWritable, else read-only and kernel-enforced).
func (h *Harness) NewArena(size int, pluginWritable bool) *Arena {
	h.t.Helper()
	id := h.nextID
	h.nextID++
	f, mem, err := shm.Create(fmt.Sprintf("sdktest-%d", id), size, !pluginWritable)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { shm.Unmap(mem); f.Close() })
	if err := h.Remote.MapArena(context.Background(), id, uint64(size), pluginWritable, int(f.Fd())); err != nil {
		h.t.Fatalf("MapArena %d: %v", id, err)
	}
	return &Arena{ID: id, Mem: mem, Writable: pluginWritable, f: f}
}

// Float32 copies data into the arena as tensor name and returns it bound to
// the host's mapping (read results with Float32()). The ref grants write
// access when the arena is plugin-writable.
func (a *Arena) Float32(t testing.TB, name string, data []float32, shape ...int) *sdk.Tensor {
	t.Helper()
	if sdk.Numel(shape) != len(data) {
		t.Fatalf("sdktest: tensor %q: %d values for shape %v", name, len(data), shape)
	}
	off := (a.used + 63) &^ 63
	n := 4 * len(data)
	if off+n > len(a.Mem) {
		t.Fatalf("sdktest: arena %d full (%d of %d bytes used, need %d)", a.ID, a.used, len(a.Mem), n)
	}
	a.used = off + n
	if n > 0 {
		copy(unsafe.Slice((*float32)(unsafe.Pointer(&a.Mem[off])), len(data)), data)
	}
	ref := sdk.TensorRef{Name: name, Arena: a.ID, Offset: uint64(off), DType: sdk.F32, Shape: shape, Writable: a.Writable}
	ts, err := sdk.BindTensor(ref, a.Mem)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}
