// controlnet_load.go: recognising a ControlNet file's form and binding it:
// ldm with the "control_model." prefix (v1.0 full ControlLDM and v1.1
// files), bare ldm names (A1111 extract_controlnet.py pruned / fp16 files),
// and the diffusers ControlNetModel layout (renamed at the edge,
// controlnet_diffusers.go). Precision is per tensor, so fp16/bf16/fp32
// files need nothing special.
//
// Refused with a clear error rather than loaded: "difference" nets and
// Control-LoRA (both need the host U-Net's weights, not wired here),
// T2I-Adapters (a different network), and SDXL nets. Detection order follows
// ComfyUI comfy/controlnet.py load_controlnet_state_dict.
package models

import (
	"fmt"
)

// ControlNetLayout names the file form a ControlNet was found in.
type ControlNetLayout string

// The accepted forms.
const (
	ControlNetLDM       ControlNetLayout = "ldm (control_model.)"
	ControlNetBare      ControlNetLayout = "ldm (bare)"
	ControlNetDiffusers ControlNetLayout = "diffusers"
)

// ControlNetWeights returns a Weights view of src in ldm names without
// prefix, and the form it was found in.
func ControlNetWeights(src Source) (*Weights, ControlNetLayout, error) {
	names := src.Names()
	has := func(k string) bool { _, ok := src.Lookup(k); return ok }
	switch {
	case has("lora_controlnet"):
		return nil, "", fmt.Errorf("controlnet: Control-LoRA file (key \"lora_controlnet\"): needs the loaded U-Net's weights, not supported")
	case has("difference"):
		return nil, "", fmt.Errorf("controlnet: \"difference\" ControlNet (weights relative to SD 1.5): needs the loaded U-Net's weights, not supported")
	case has("controlnet_cond_embedding.conv_in.weight"):
		if hasAny(names, "add_embedding.", "class_embedding.") {
			return nil, "", fmt.Errorf("controlnet: %w: diffusers ControlNet with add_embedding/class_embedding (SDXL)", ErrNotSD1)
		}
		rs, err := diffusersControlNetSource(src)
		if err != nil {
			return nil, "", fmt.Errorf("controlnet: %w", err)
		}
		return NewWeights(rs), ControlNetDiffusers, nil
	case has("control_model.zero_convs.0.0.weight"):
		return NewWeights(src).Sub("control_model."), ControlNetLDM, nil
	case has("zero_convs.0.0.weight"):
		return NewWeights(src), ControlNetBare, nil
	case hasAny(names, "body.0.", "adapter.body.", "conv_in.weight"):
		return nil, "", fmt.Errorf("controlnet: looks like a T2I-Adapter (body.N / conv_in), not a ControlNet")
	}
	return nil, "", fmt.Errorf("controlnet: no ControlNet tensors (zero_convs.0.0.weight, control_model.zero_convs.0.0.weight or controlnet_cond_embedding.conv_in.weight)")
}

// LoadControlNet recognises src's form, infers the configuration (heads =
// SD1Heads), checks it is an SD 1.x ControlNet and binds it.
func LoadControlNet(src Source) (*ControlNet, ControlNetLayout, error) {
	w, layout, err := ControlNetWeights(src)
	if err != nil {
		return nil, "", err
	}
	cfg, err := InferControlNetConfig(w)
	if err != nil {
		return nil, layout, err
	}
	c, err := NewControlNet(w, cfg)
	return c, layout, err
}
