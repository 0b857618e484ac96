// protocol.go: what the host and the ControlNet plugin agree on beyond the
// SDK's ResidualsRequest: the parameter names, the name of the hint input,
// and the text forms of the U-Net configuration and of the per-residual
// scales. Both sides use these helpers, so the wire form lives in one place.
//
// It does not run anything (plugin.go) and does not decide scales (the host
// adapter, host/controlnet.go, does).
package controlnet

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/sdbridge/sdbridge/models"
)

// Parameters of a Residuals call.
const (
	// ParamNet is the ControlNet file (or diffusers directory). Required.
	ParamNet = "controlnet"
	// ParamUNet is the host U-Net's configuration (EncodeUNetConfig). Required.
	ParamUNet = "unet_config"
	// ParamHintKey names the hint image (a hash the host computes once per
	// image); the plugin caches the hint encoding under (net, key).
	ParamHintKey = "hint_key"
	// ParamScales lists one multiplier per granted output, in ResidualNames
	// order ("1,1,...,1"); absent means 1 for every residual.
	ParamScales = "scales"
	// ParamAccumulate ("true") adds the scaled residuals into the outputs
	// instead of overwriting them (summing several ControlNets in place).
	ParamAccumulate = "accumulate"
	// ParamOp is "residuals" (default) or "load": load the net and check it
	// against ParamUNet without computing anything (no tensors needed).
	ParamOp = "op"
	// ParamGlobalPool ("true") replaces every residual by its spatial mean
	// per row and channel (v1.1 shuffle nets, cldm global_average_pooling).
	ParamGlobalPool = "global_pool"
)

// Op values.
const (
	OpResiduals = "residuals"
	OpLoad      = "load"
)

// HintInput is the name of the hint tensor in ResidualsRequest.Inputs:
// F32 [1 or B, 3, 8h, 8w], RGB in [0, 1], read-only.
const HintInput = "hint"

// EncodeUNetConfig is the ParamUNet value of cfg.
func EncodeUNetConfig(cfg models.UNetConfig) string {
	b, _ := json.Marshal(cfg) // plain ints, bools and slices: cannot fail
	return string(b)
}

// DecodeUNetConfig parses a ParamUNet value.
func DecodeUNetConfig(s string) (models.UNetConfig, error) {
	var cfg models.UNetConfig
	if err := json.Unmarshal([]byte(s), &cfg); err != nil {
		return cfg, fmt.Errorf("parameter %q: %w", ParamUNet, err)
	}
	if cfg.ModelChannels <= 0 || len(cfg.ChannelMult) == 0 || len(cfg.Attention) != len(cfg.ChannelMult) {
		return cfg, fmt.Errorf("parameter %q: incomplete U-Net configuration %s", ParamUNet, s)
	}
	return cfg, nil
}

// EncodeScales is the ParamScales value of s.
func EncodeScales(s []float32) string {
	parts := make([]string, len(s))
	for i, v := range s {
		parts[i] = strconv.FormatFloat(float64(v), 'g', -1, 32)
	}
	return strings.Join(parts, ",")
}

// DecodeScales parses a ParamScales value of exactly n numbers.
func DecodeScales(s string, n int) ([]float32, error) {
	parts := strings.Split(s, ",")
	if len(parts) != n {
		return nil, fmt.Errorf("parameter %q: %d values, want %d (one per output)", ParamScales, len(parts), n)
	}
	out := make([]float32, n)
	for i, p := range parts {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 32)
		if err != nil {
			return nil, fmt.Errorf("parameter %q: value %d: %w", ParamScales, i, err)
		}
		out[i] = float32(v)
	}
	return out, nil
}
