// plugin_hooks.go: the host's typed calls of plugin hooks. Each checks the
// refs it grants against live arenas before the call and validates every ref
// the plugin reports as written (refs.go) after it. It does not schedule
// hooks per step (the pipeline does) or track patch state (plugin_patch.go).
package host

import (
	"context"
	"fmt"

	"github.com/sdbridge/sdbridge/plugins/sdk"
)

func grantRefs(ts ...[]*sdk.Tensor) ([]sdk.TensorRef, error) {
	var out []sdk.TensorRef
	for _, list := range ts {
		for _, t := range list {
			if t == nil {
				continue
			}
			if err := checkRef(t.TensorRef); err != nil {
				return nil, err
			}
			out = append(out, t.TensorRef)
		}
	}
	return out, nil
}

// PlanPatch asks which tensors a patch would write.
func (p *Plugin) PlanPatch(ctx context.Context, req *sdk.PlanPatchRequest) (*sdk.PlanPatchResponse, error) {
	var resp *sdk.PlanPatchResponse
	err := p.call(ctx, "PlanPatch", nil, func(ctx context.Context, r *sdk.Remote) (err error) {
		resp, err = r.PlanPatch(ctx, req)
		return err
	})
	return resp, err
}

// PatchWeights runs a patch on granted tensors (no state tracking; see
// WeightPatch for patch/restore/swap).
func (p *Plugin) PatchWeights(ctx context.Context, req *sdk.PatchWeightsRequest) (*sdk.PatchWeightsResponse, error) {
	refs, err := grantRefs(req.Tensors, req.Inputs)
	if err != nil {
		return nil, fmt.Errorf("plugin %q: PatchWeights: %w", p.spec.Name, err)
	}
	var resp *sdk.PatchWeightsResponse
	err = p.call(ctx, "PatchWeights", refs, func(ctx context.Context, r *sdk.Remote) (err error) {
		if resp, err = r.PatchWeights(ctx, req); err != nil {
			return err
		}
		return validateWritten(refs, resp.Written)
	})
	return resp, err
}

// EncodePrompt asks a conditioner to prepare a prompt.
func (p *Plugin) EncodePrompt(ctx context.Context, req *sdk.EncodePromptRequest) (*sdk.EncodePromptResponse, error) {
	var resp *sdk.EncodePromptResponse
	err := p.call(ctx, "EncodePrompt", nil, func(ctx context.Context, r *sdk.Remote) (err error) {
		resp, err = r.EncodePrompt(ctx, req)
		return err
	})
	return resp, err
}

// ReleasePrompt forgets a prompt handle.
func (p *Plugin) ReleasePrompt(ctx context.Context, handle string) error {
	return p.call(ctx, "ReleasePrompt", nil, func(ctx context.Context, r *sdk.Remote) error {
		_, err := r.ReleasePrompt(ctx, &sdk.ReleasePromptRequest{Handle: handle})
		return err
	})
}

// Conditioning asks for one step's context, written into req.Out.
func (p *Plugin) Conditioning(ctx context.Context, req *sdk.ConditioningRequest) (*sdk.ConditioningResponse, error) {
	if req.Out == nil || !req.Out.Writable {
		return nil, fmt.Errorf("plugin %q: Conditioning needs a writable output tensor", p.spec.Name)
	}
	refs, err := grantRefs([]*sdk.Tensor{req.Out})
	if err != nil {
		return nil, fmt.Errorf("plugin %q: Conditioning: %w", p.spec.Name, err)
	}
	var resp *sdk.ConditioningResponse
	err = p.call(ctx, "Conditioning", refs, func(ctx context.Context, r *sdk.Remote) (err error) {
		if resp, err = r.Conditioning(ctx, req); err != nil {
			return err
		}
		return validateWritten(refs, []sdk.TensorRef{resp.Written})
	})
	return resp, err
}

// Residuals asks for one step's residuals, written into req.Outputs.
func (p *Plugin) Residuals(ctx context.Context, req *sdk.ResidualsRequest) (*sdk.ResidualsResponse, error) {
	refs, err := grantRefs([]*sdk.Tensor{req.X, req.Context}, req.Outputs, req.Inputs)
	if err != nil {
		return nil, fmt.Errorf("plugin %q: Residuals: %w", p.spec.Name, err)
	}
	var resp *sdk.ResidualsResponse
	err = p.call(ctx, "Residuals", refs, func(ctx context.Context, r *sdk.Remote) (err error) {
		if resp, err = r.Residuals(ctx, req); err != nil {
			return err
		}
		return validateWritten(refs, resp.Written)
	})
	return resp, err
}
