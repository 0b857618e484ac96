// Command example-scale is an example third-party sdbridge plugin, written
// against package sdk alone: a weight patcher that multiplies one named
// tensor by a factor. Install it by listing the built binary with its
// sha256 in $XDG_CONFIG_HOME/sdbridge/plugins.json.
//
// It deliberately does nothing useful for image quality; it shows the whole
// contract (Describe, PlanPatch, PatchWeights) in a few lines.
package main

import (
	"context"
	"fmt"

	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// scaler multiplies the tensor named by "tensor" by "factor".
type scaler struct{}

func (scaler) Describe(context.Context, *sdk.DescribeRequest) (*sdk.DescribeResponse, error) {
	return &sdk.DescribeResponse{
		Name:    "example-scale",
		Version: "0.1.0",
		Params: []sdk.ParamSpec{
			{Name: "tensor", Type: sdk.ParamString, Help: "checkpoint key of the tensor to scale"},
			{Name: "factor", Type: sdk.ParamFloat, Default: "1", Help: "multiplier"},
		},
	}, nil
}

// PlanPatch checks the tensor exists and is float32.
func (scaler) PlanPatch(_ context.Context, req *sdk.PlanPatchRequest) (*sdk.PlanPatchResponse, error) {
	name, ok := req.Params.Get("tensor")
	if !ok {
		return nil, fmt.Errorf("example-scale: parameter \"tensor\" is required")
	}
	if _, err := req.Params.Float("factor", 1); err != nil {
		return nil, fmt.Errorf("example-scale: %w", err)
	}
	for _, t := range req.Model {
		if t.Name == name {
			if t.DType != sdk.F32 {
				return nil, fmt.Errorf("example-scale: tensor %q is %s, want F32", name, t.DType)
			}
			return &sdk.PlanPatchResponse{Touched: []string{name}}, nil
		}
	}
	return nil, fmt.Errorf("example-scale: model has no tensor %q", name)
}

// PatchWeights scales the granted tensor in place.
func (scaler) PatchWeights(_ context.Context, req *sdk.PatchWeightsRequest) (*sdk.PatchWeightsResponse, error) {
	f, err := req.Params.Float("factor", 1)
	if err != nil {
		return nil, fmt.Errorf("example-scale: %w", err)
	}
	for _, t := range req.Tensors {
		w, err := t.MutableFloat32() // [numel], in the host's arena
		if err != nil {
			return nil, fmt.Errorf("example-scale: %w", err)
		}
		for i := range w {
			w[i] *= float32(f)
		}
	}
	return &sdk.PatchWeightsResponse{Written: sdk.Refs(req.Tensors...)}, nil
}

func main() { sdk.Serve(scaler{}, sdk.WithLogger(sdk.NewLogger("example-scale"))) }
