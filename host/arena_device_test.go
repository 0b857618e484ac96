// arena_device_test.go: device arenas on the host side, against the
// stand-in CUDA driver in a child process: refs of device buffers (views
// included) and their checks, write grants, validation of what a plugin
// reports, and that a plugin without the "device_arenas" capability is
// refused a device arena up front (never left waiting for an fd).
package host

import (
	"context"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

func openFakeDevice(t *testing.T, name string) *cuda.Device {
	t.Helper()
	d, err := cuda.Open(0)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestDeviceRefOf(t *testing.T) {
	if !cudatest.InChild() {
		cudatest.RunChild(t, "TestDeviceRefOf", cudatest.Build(t))
		return
	}
	d := openFakeDevice(t, "TestDeviceRefOf")
	buf, err := d.Alloc(1024)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Free()
	other, err := d.Alloc(256)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Free()
	set := NewDeviceArenaSet("weights", true)
	if err := set.Add(buf, buf); err != nil { // twice: registered once
		t.Fatal(err)
	}
	if n := len(set.Arenas()); n != 1 {
		t.Fatalf("%d arenas for one allocation", n)
	}
	a := set.Arenas()[0]
	if !a.OnDevice() || a.Size() != 1024 || a.Fd() != -1 || a.DeviceBuffer() != buf {
		t.Fatalf("device arena: on device %v, size %d, fd %d", a.OnDevice(), a.Size(), a.Fd())
	}
	ro, err := NewDeviceArena("inputs", other, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	view, _ := buf.Slice(256, 512)
	tests := []struct {
		name     string
		buf      *cuda.Buffer
		dtype    sdk.DType
		shape    []int
		writable bool
		wantOff  uint64
		wantErr  string
	}{
		{"whole allocation", buf, sdk.F32, []int{16, 16}, true, 0, ""},
		{"view at 256", view, sdk.F16, []int{2, 128}, true, 256, ""},
		{"past the view", view, sdk.F16, []int{257}, true, 0, "do not fit"},
		{"read-only arena", other, sdk.F32, []int{4}, false, 0, ""},
		{"write grant in read-only arena", other, sdk.F32, []int{4}, true, 0, "read-only for plugins"},
		{"unknown dtype", buf, "F8", []int{4}, true, 0, "unknown dtype"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ref, err := DeviceRefOf("x", tc.buf, tc.dtype, tc.shape, tc.writable)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ref.Offset != tc.wantOff || ref.Writable != tc.writable || ref.DType != tc.dtype {
				t.Fatalf("ref %+v, want offset %d", ref, tc.wantOff)
			}
			if err := checkRef(ref); err != nil {
				t.Fatalf("checkRef: %v", err)
			}
		})
	}
	// A view registers its whole allocation (an arena-allocated tensor).
	block, err := d.Alloc(4096)
	if err != nil {
		t.Fatal(err)
	}
	defer block.Free()
	piece, _ := block.Slice(1024, 512)
	vset := NewDeviceArenaSet("block", true)
	if err := vset.Add(piece, piece); err != nil {
		t.Fatal(err)
	}
	other2, _ := block.Slice(2048, 256)
	if err := vset.Add(other2); err != nil { // same block: no new arena
		t.Fatal(err)
	}
	if as := vset.Arenas(); len(as) != 1 || as[0].Size() != 4096 || as[0].DeviceBuffer() != nil {
		t.Fatalf("view registration: %d arenas (size %d)", len(as), as[0].Size())
	}
	if ref, err := DeviceRefOf("p", other2, sdk.F16, []int{128}, true); err != nil || ref.Offset != 2048 || ref.Arena != vset.Arenas()[0].ID {
		t.Fatalf("ref of a piece of a registered block: %+v, %v", ref, err)
	}
	vset.Close()

	grant, _ := DeviceRefOf("w", view, sdk.F32, []int{8}, true)
	moved := grant
	moved.Offset += 4
	if err := validateWritten([]sdk.TensorRef{grant}, []sdk.TensorRef{grant}); err != nil {
		t.Fatalf("validating the granted ref: %v", err)
	}
	if err := validateWritten([]sdk.TensorRef{grant}, []sdk.TensorRef{moved}); err == nil || !strings.Contains(err.Error(), "offset") {
		t.Fatalf("a moved ref was accepted: %v", err)
	}
	set.Close()
	if _, err := DeviceRefOf("w", view, sdk.F32, []int{8}, true); err == nil || !strings.Contains(err.Error(), "not in a device arena") {
		t.Fatalf("ref into a closed arena: %v", err)
	}
}

// TestDeviceArenaRefusedByOldPlugin: testplug (no "device_arenas"
// capability) is refused a device ref with a clear error, nothing is sent
// to it, and it still serves host arenas afterwards.
func TestDeviceArenaRefusedByOldPlugin(t *testing.T) {
	if !cudatest.InChild() {
		cudatest.RunChild(t, "TestDeviceArenaRefusedByOldPlugin", cudatest.Build(t))
		return
	}
	d := openFakeDevice(t, "TestDeviceArenaRefusedByOldPlugin")
	buf, err := d.Alloc(256)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Free()
	a, err := NewDeviceArena("weights", buf, true)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	_, p := newTestSupervisor(t, "")
	p.SetDevice("cuda:0")
	ctx := context.Background()
	ok, err := p.TakesDeviceArenas(ctx)
	if err != nil || ok {
		t.Fatalf("TakesDeviceArenas = %v, %v; want false", ok, err)
	}
	ref, err := DeviceRefOf("w", buf, sdk.F32, []int{8}, true)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.PatchWeights(ctx, &sdk.PatchWeightsRequest{Tensors: []*sdk.Tensor{sdk.Ref(ref)}})
	if err == nil || !strings.Contains(err.Error(), "does not take device arenas") {
		t.Fatalf("PatchWeights with a device ref: %v", err)
	}
	pool := NewArenaPool("host", 4096, true)
	defer pool.Close()
	data := pool.AllocFloat32(4)
	copy(data, []float32{1, 2, 3, 4})
	href, err := RefOf("h", data, []int{4}, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.PatchWeights(ctx, &sdk.PatchWeightsRequest{Tensors: []*sdk.Tensor{sdk.Ref(href)}, Params: sdk.Params{{Name: "scale", Value: "2"}}}); err != nil {
		t.Fatalf("host arena after the refusal: %v", err)
	}
	if data[3] != 8 || p.Starts() != 1 {
		t.Fatalf("data %v, starts %d", data, p.Starts())
	}
}
