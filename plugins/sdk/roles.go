// roles.go: the Go interfaces a plugin implements, one role each, their
// request and response structs, and the Unimplemented* embeddables. Every
// method takes ctx first and a request struct and returns a response struct
// and an error; tensors are named, never positional.
//
// This file holds no wire code (server.go, client.go) and no behaviour.
package sdk

import (
	"context"
	"errors"
)

// Capability names a role in DescribeResponse.Capabilities.
type Capability string

// The roles the protocol knows.
const (
	CapPatchWeights Capability = "patch_weights"
	CapConditioning Capability = "conditioning"
	CapResiduals    Capability = "residuals"
)

// ErrUnimplemented is returned (wrapped) for a hook the plugin does not
// implement; the host sees it as errors.Is(err, ErrUnimplemented).
var ErrUnimplemented = errors.New("not implemented by this plugin")

// DescribeRequest asks a plugin who it is.
type DescribeRequest struct {
	// Device (minor 2) is the host's compute device, "cpu" or "cuda:N";
	// empty from older hosts and for listings. Where each tensor of a call
	// lives is told by the tensor itself (Tensor.OnDevice).
	Device string
}

// DescribeResponse names a plugin. The SDK adds the capabilities of the
// roles the plugin's type implements.
type DescribeResponse struct {
	Name         string
	Version      string
	APIMinor     uint32 // minor protocol version the plugin was built against
	Capabilities []Capability
	Params       []ParamSpec
}

// Describer is required of every plugin.
type Describer interface {
	Describe(ctx context.Context, req *DescribeRequest) (*DescribeResponse, error)
}

// PlanPatchRequest lists the model's patchable tensors (layout only).
type PlanPatchRequest struct {
	Model  []TensorInfo
	Params Params
}

// PlanPatchResponse names every tensor PatchWeights will write. A plugin
// refuses the whole request here (atomic: nothing is written on error).
type PlanPatchResponse struct {
	Touched  []string
	Warnings []string
	// ReadsOriginals (minor version 1) promises that PatchWeights computes
	// each granted tensor that comes with a read-only input of the same
	// name (its original bytes: F16, BF16 or F32, same shape) from that
	// input alone, never reading the tensor's current values; the host then
	// skips restoring it first. Tensors without such an input hold their
	// original values as before.
	ReadsOriginals bool
}

// PatchWeightsRequest grants the planned tensors writable, holding their
// original (unpatched) values, plus optional read-only inputs. If the plan
// said ReadsOriginals, a granted tensor with an input of the same name holds
// unspecified values and the input holds its original bytes.
type PatchWeightsRequest struct {
	Tensors []*Tensor
	Inputs  []*Tensor
	Params  Params
}

// PatchWeightsResponse reports the refs the plugin wrote.
type PatchWeightsResponse struct {
	Written []TensorRef
}

// WeightPatcher patches model weights in place (LoRA).
type WeightPatcher interface {
	PlanPatch(ctx context.Context, req *PlanPatchRequest) (*PlanPatchResponse, error)
	PatchWeights(ctx context.Context, req *PatchWeightsRequest) (*PatchWeightsResponse, error)
}

// EncodePromptRequest asks a conditioner to prepare a prompt.
type EncodePromptRequest struct {
	Text   string
	Params Params
}

// EncodePromptResponse returns a handle for later Conditioning calls and the
// shape of the context it writes ([B, L, C]).
type EncodePromptResponse struct {
	Handle       string
	ContextShape []int
}

// ReleasePromptRequest forgets a handle.
type ReleasePromptRequest struct{ Handle string }

// ReleasePromptResponse is empty.
type ReleasePromptResponse struct{}

// ConditioningRequest asks for the context of one step.
type ConditioningRequest struct {
	Handle    string
	Timesteps []float32 // [B]
	Out       *Tensor   // writable, [B, L, C]
	Params    Params
}

// ConditioningResponse reports the ref written (left empty, the SDK
// reports req.Out).
type ConditioningResponse struct {
	Written TensorRef
}

// Conditioner replaces the U-Net's context per step (ELLA).
type Conditioner interface {
	EncodePrompt(ctx context.Context, req *EncodePromptRequest) (*EncodePromptResponse, error)
	ReleasePrompt(ctx context.Context, req *ReleasePromptRequest) (*ReleasePromptResponse, error)
	Conditioning(ctx context.Context, req *ConditioningRequest) (*ConditioningResponse, error)
}

// ResidualsRequest asks for the residuals of one step.
type ResidualsRequest struct {
	X         *Tensor   // [B, 4, h, w]
	Timesteps []float32 // [B]
	Context   *Tensor   // [B, L, C]
	Outputs   []*Tensor // writable, keyed by U-Net block name
	Inputs    []*Tensor // extra named inputs (hint image...)
	Params    Params
}

// ResidualsResponse reports the refs written.
type ResidualsResponse struct {
	Written []TensorRef
}

// ResidualProvider adds residuals to U-Net blocks per step (ControlNet).
type ResidualProvider interface {
	Residuals(ctx context.Context, req *ResidualsRequest) (*ResidualsResponse, error)
}

// Shutdowner is optional: called before the plugin process exits.
type Shutdowner interface {
	Shutdown(ctx context.Context) error
}

// UnimplementedWeightPatcher can be embedded to implement WeightPatcher
// partially (or to keep compiling when the role grows a method).
type UnimplementedWeightPatcher struct{}

// PlanPatch returns ErrUnimplemented.
func (UnimplementedWeightPatcher) PlanPatch(context.Context, *PlanPatchRequest) (*PlanPatchResponse, error) {
	return nil, ErrUnimplemented
}

// PatchWeights returns ErrUnimplemented.
func (UnimplementedWeightPatcher) PatchWeights(context.Context, *PatchWeightsRequest) (*PatchWeightsResponse, error) {
	return nil, ErrUnimplemented
}

// UnimplementedConditioner can be embedded in a Conditioner.
type UnimplementedConditioner struct{}

// EncodePrompt returns ErrUnimplemented.
func (UnimplementedConditioner) EncodePrompt(context.Context, *EncodePromptRequest) (*EncodePromptResponse, error) {
	return nil, ErrUnimplemented
}

// ReleasePrompt does nothing.
func (UnimplementedConditioner) ReleasePrompt(context.Context, *ReleasePromptRequest) (*ReleasePromptResponse, error) {
	return &ReleasePromptResponse{}, nil
}

// Conditioning returns ErrUnimplemented.
func (UnimplementedConditioner) Conditioning(context.Context, *ConditioningRequest) (*ConditioningResponse, error) {
	return nil, ErrUnimplemented
}

// UnimplementedResidualProvider can be embedded in a ResidualProvider.
type UnimplementedResidualProvider struct{}

// Residuals returns ErrUnimplemented.
func (UnimplementedResidualProvider) Residuals(context.Context, *ResidualsRequest) (*ResidualsResponse, error) {
	return nil, ErrUnimplemented
}

// capabilities lists the roles impl implements.
func capabilities(impl any) []Capability {
	var caps []Capability
	if _, ok := impl.(WeightPatcher); ok {
		caps = append(caps, CapPatchWeights)
	}
	if _, ok := impl.(Conditioner); ok {
		caps = append(caps, CapConditioning)
	}
	if _, ok := impl.(ResidualProvider); ok {
		caps = append(caps, CapResiduals)
	}
	return caps
}
