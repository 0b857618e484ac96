// device_test.go: device arenas end to end in one process, against the
// stand-in CUDA driver (cuda/cudatest): the plugin opens the host's
// allocation by IPC handle (once, shared by arenas naming the same
// allocation), binds refs at their offsets, refuses what the grants
// forbid, writes in place and is synchronised before the reply.
package sdk_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/plugins/sdk/sdktest"
)

// doubler doubles every granted F32 device tensor, through host copies.
type doubler struct {
	sdk.UnimplementedWeightPatcher
	device string // from the last Describe
}

func (d *doubler) Describe(_ context.Context, req *sdk.DescribeRequest) (*sdk.DescribeResponse, error) {
	d.device = req.Device
	return &sdk.DescribeResponse{Name: "doubler", Capabilities: []sdk.Capability{sdk.CapDeviceArenas}}, nil
}

func (d *doubler) PatchWeights(_ context.Context, req *sdk.PatchWeightsRequest) (*sdk.PatchWeightsResponse, error) {
	for _, t := range req.Tensors {
		if !t.OnDevice() {
			return nil, errors.New("tensor in host memory")
		}
		if _, err := t.Float32(); !errors.Is(err, sdk.ErrOnDevice) {
			return nil, errors.New("Float32 of a device tensor did not fail with ErrOnDevice")
		}
		b, err := t.MutableDeviceBuffer()
		if err != nil {
			return nil, err
		}
		v := make([]float32, t.Numel())
		if err := b.DownloadFloat32(v); err != nil {
			return nil, err
		}
		for i := range v {
			v[i] *= 2
		}
		if err := b.UploadFloat32(v); err != nil {
			return nil, err
		}
	}
	return &sdk.PatchWeightsResponse{Written: sdk.Refs(req.Tensors...)}, nil
}

func TestDeviceArenas(t *testing.T) {
	if !cudatest.InChild() {
		cudatest.RunChild(t, "TestDeviceArenas", cudatest.Build(t))
		return
	}
	dev, err := sdk.CUDADevice(0)
	if err != nil {
		t.Fatal(err)
	}
	buf, err := dev.Alloc(4096) // the "host's" allocation
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Free()
	init := make([]float32, 1024)
	for i := range init {
		init[i] = float32(i)
	}
	if err := buf.UploadFloat32(init); err != nil {
		t.Fatal(err)
	}
	plug := &doubler{}
	h := sdktest.New(t, plug)
	ctx := context.Background()
	d, err := h.Remote.DescribeFor(ctx, &sdk.DescribeRequest{Device: "cuda:0"})
	if err != nil {
		t.Fatal(err)
	}
	if d.APIMinor != sdk.APIMinor || sdk.APIMinor < 2 || !slices.Contains(d.Capabilities, sdk.CapDeviceArenas) || plug.device != "cuda:0" {
		t.Fatalf("Describe = minor %d caps %v, plugin saw device %q", d.APIMinor, d.Capabilities, plug.device)
	}
	rw := h.NewDeviceArena(buf, true)
	pad := rw.Tensor(t, "pad", sdk.F32, 3) // offset 0, left alone
	w := rw.Tensor(t, "w", sdk.F32, 4, 4)  // offset 256
	if _, err := h.Remote.PatchWeights(ctx, &sdk.PatchWeightsRequest{Tensors: []*sdk.Tensor{w}}); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, 1024)
	if err := buf.DownloadFloat32(got); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		want := init[i]
		if i >= 64 && i < 64+16 { // w: bytes [256, 320)
			want *= 2
		}
		if got[i] != want {
			t.Fatalf("element %d = %v, want %v (pad %v, w at offset %d)", i, got[i], want, pad.Offset, w.Offset)
		}
	}

	ro := h.NewDeviceArena(buf, false) // the same allocation again, read-only
	bad := []struct {
		name string
		ref  sdk.TensorRef
		want string
	}{
		{"write grant in read-only arena", sdk.TensorRef{Name: "x", Arena: ro.ID, DType: sdk.F32, Shape: []int{4}, Writable: true}, "read-only arena"},
		{"past the end", sdk.TensorRef{Name: "x", Arena: rw.ID, Offset: 4000, DType: sdk.F32, Shape: []int{100}, Writable: true}, "outside arena"},
		{"not granted", sdk.TensorRef{Name: "x", Arena: rw.ID, DType: sdk.F32, Shape: []int{4}}, "not granted writable"},
		{"unknown arena", sdk.TensorRef{Name: "x", Arena: 99, DType: sdk.F32, Shape: []int{4}, Writable: true}, "not mapped"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.Remote.PatchWeights(ctx, &sdk.PatchWeightsRequest{Tensors: []*sdk.Tensor{sdk.Ref(tc.ref)}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if err := h.Remote.UnmapArena(ctx, rw.ID); err != nil {
		t.Fatal(err)
	}
	_, err = h.Remote.PatchWeights(ctx, &sdk.PatchWeightsRequest{Tensors: []*sdk.Tensor{w}})
	if err == nil || !strings.Contains(err.Error(), "not mapped") {
		t.Fatalf("PatchWeights after UnmapArena: %v", err)
	}
	// The read-only arena names the same allocation: its mapping is shared
	// and outlives the other arena's unmap.
	in := sdk.Ref(sdk.TensorRef{Name: "in", Arena: ro.ID, Offset: 256, DType: sdk.F32, Shape: []int{4}})
	if _, err := h.Remote.PatchWeights(ctx, &sdk.PatchWeightsRequest{Inputs: []*sdk.Tensor{in}}); err != nil {
		t.Fatalf("read-only arena of the same allocation after the other's unmap: %v", err)
	}
	if err := h.Remote.UnmapArena(ctx, ro.ID); err != nil {
		t.Fatal(err)
	}
}
