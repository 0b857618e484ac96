// main_test.go tests the example plugin through the SDK's in-process
// harness: real gRPC, real memfd arenas, nothing of the host.
package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/plugins/sdk/sdktest"
)

func TestScale(t *testing.T) {
	ctx := context.Background()
	h := sdktest.New(t, scaler{})

	d, err := h.Remote.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "example-scale" || !strings.Contains(strings.Join(capNames(d.Capabilities), ","), "patch_weights") {
		t.Fatalf("Describe = %+v", d)
	}

	arena := h.NewArena(1<<16, true)
	w := arena.Float32(t, "w", []float32{1, 2, 3, 4, 5, 6}, 2, 3)
	params := sdk.Params{{Name: "tensor", Value: "w"}, {Name: "factor", Value: "0.5"}}

	tests := []struct {
		name    string
		params  sdk.Params
		wantErr string
	}{
		{"missing tensor param", sdk.Params{{Name: "factor", Value: "2"}}, `"tensor" is required`},
		{"unknown tensor", sdk.Params{{Name: "tensor", Value: "nope"}}, `no tensor "nope"`},
		{"bad factor", sdk.Params{{Name: "tensor", Value: "w"}, {Name: "factor", Value: "x"}}, `parameter "factor"`},
		{"ok", params, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plan, err := h.Remote.PlanPatch(ctx, &sdk.PlanPatchRequest{Model: []sdk.TensorInfo{w.Info()}, Params: tc.params})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{"w"}, plan.Touched); diff != "" {
				t.Fatalf("touched (-want +got):\n%s", diff)
			}
		})
	}

	resp, err := h.Remote.PatchWeights(ctx, &sdk.PatchWeightsRequest{Tensors: []*sdk.Tensor{w}, Params: params})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Written) != 1 || resp.Written[0].Name != "w" {
		t.Fatalf("written = %+v", resp.Written)
	}
	got, _ := w.Float32()
	if diff := cmp.Diff([]float32{0.5, 1, 1.5, 2, 2.5, 3}, got); diff != "" {
		t.Fatalf("patched in place (-want +got):\n%s", diff)
	}

	// A read-only arena: the SDK refuses the writable grant.
	ro := h.NewArena(1<<12, false)
	r := ro.Float32(t, "w", []float32{1}, 1)
	r.Writable = true
	if _, err := h.Remote.PatchWeights(ctx, &sdk.PatchWeightsRequest{Tensors: []*sdk.Tensor{r}, Params: params}); err == nil || !strings.Contains(err.Error(), "read-only arena") {
		t.Fatalf("write grant in read-only arena: err = %v", err)
	}
	// Roles the example lacks are reported as unimplemented.
	if _, err := h.Remote.Residuals(ctx, &sdk.ResidualsRequest{}); !errors.Is(err, sdk.ErrUnimplemented) {
		t.Fatalf("Residuals: err = %v, want ErrUnimplemented", err)
	}
}

func capNames(cs []sdk.Capability) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = string(c)
	}
	return out
}
