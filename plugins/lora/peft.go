// peft.go reads the PEFT LoRA configuration that gives alpha to PEFT and
// diffusers files, which carry no alpha tensors (spec §7.4): the
// "lora_adapter_metadata" safetensors metadata key written by diffusers
// (loaders/lora_base.py; flat {"r","lora_alpha",...} or prefixed by component,
// {"unet.lora_alpha", "text_encoder.lora_alpha", ...}) or an
// adapter_config.json beside an adapter_model.safetensors. PEFT scaling is
// lora_alpha/r, or lora_alpha/sqrt(r) with use_rslora; alpha_pattern entries
// override lora_alpha for modules whose name ends in the pattern.
//
// Without either, a module without alpha gets scale 1. The rank always comes
// from the tensor shapes, never from "r" (trust shapes, spec §13). It does
// not read kohya ss_* metadata: kohya files carry alpha tensors.
package lora

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// peftSettings is one component's PEFT config (LoraConfig, or
// LoHaConfig/LoKrConfig, which spell lora_alpha "alpha").
type peftSettings struct {
	Alpha        float64
	HasAlpha     bool
	R            int // config rank: only used by LoKr with no decomposed side (PEFT scales alpha/r there too)
	RSLoRA       bool
	AlphaPattern map[string]float64
}

// peftConfig maps a component ("" = all, "unet", "text_encoder") to settings.
type peftConfig map[string]peftSettings

// parsePEFTConfig decodes the lora_adapter_metadata key, if present.
func parsePEFTConfig(meta map[string]string) (peftConfig, error) {
	raw, ok := meta["lora_adapter_metadata"]
	if !ok {
		return nil, nil
	}
	return decodePEFTConfig([]byte(raw))
}

// decodePEFTConfig accepts a flat PEFT config or one with "<component>."
// prefixed keys.
func decodePEFTConfig(b []byte) (peftConfig, error) {
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, fmt.Errorf("PEFT adapter config: %w", err)
	}
	groups := map[string]map[string]json.RawMessage{}
	for k, v := range all {
		comp, field := "", k
		if i := strings.LastIndex(k, "."); i >= 0 {
			comp, field = k[:i], k[i+1:]
		}
		if groups[comp] == nil {
			groups[comp] = map[string]json.RawMessage{}
		}
		groups[comp][field] = v
	}
	cfg := peftConfig{}
	for comp, fields := range groups {
		var s peftSettings
		for _, name := range []string{"alpha", "lora_alpha"} {
			if v, ok := fields[name]; ok {
				if err := json.Unmarshal(v, &s.Alpha); err != nil {
					return nil, fmt.Errorf("PEFT adapter config: %s %s: %w", comp, name, err)
				}
				s.HasAlpha = true
			}
		}
		if v, ok := fields["r"]; ok {
			if err := json.Unmarshal(v, &s.R); err != nil {
				return nil, fmt.Errorf("PEFT adapter config: %s r: %w", comp, err)
			}
		}
		if v, ok := fields["use_rslora"]; ok {
			if err := json.Unmarshal(v, &s.RSLoRA); err != nil {
				return nil, fmt.Errorf("PEFT adapter config: %s use_rslora: %w", comp, err)
			}
		}
		if v, ok := fields["alpha_pattern"]; ok {
			if err := json.Unmarshal(v, &s.AlphaPattern); err != nil {
				return nil, fmt.Errorf("PEFT adapter config: %s alpha_pattern: %w", comp, err)
			}
		}
		cfg[comp] = s
	}
	return cfg, nil
}

// loadSidecarConfig reads adapter_config.json beside an
// adapter_model.safetensors (the PEFT save_pretrained layout).
func loadSidecarConfig(path string) (peftConfig, error) {
	if filepath.Base(path) != "adapter_model.safetensors" {
		return nil, nil
	}
	b, err := os.ReadFile(filepath.Join(filepath.Dir(path), "adapter_config.json"))
	if err != nil {
		return nil, nil // no sidecar: scale 1
	}
	return decodePEFTConfig(b)
}

// peftScale returns the PEFT scale of a module without an alpha tensor,
// and false when no config covers it (then the scale is 1). rank 0 (a LoKr
// with no decomposed side) falls back to the config's r.
func (c peftConfig) peftScale(module string, rank int) (float64, bool) {
	if len(c) == 0 {
		return 0, false
	}
	s, ok := c[""]
	for comp, cs := range c {
		if comp != "" && strings.HasPrefix(module, comp+".") {
			s, ok = cs, true
		}
	}
	if rank <= 0 {
		rank = s.R
	}
	if !ok || !s.HasAlpha || rank <= 0 {
		return 0, false
	}
	alpha := s.Alpha
	best := -1
	for pat, a := range s.AlphaPattern {
		if (module == pat || strings.HasSuffix(module, "."+pat)) && len(pat) > best {
			alpha, best = a, len(pat)
		}
	}
	if s.RSLoRA {
		return alpha / math.Sqrt(float64(rank)), true
	}
	return alpha / float64(rank), true
}
