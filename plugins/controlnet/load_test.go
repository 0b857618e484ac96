// load_test.go: the file forms the plugin opens: ldm with and without the
// control_model. prefix, fp16 and fp32, a diffusers ControlNetModel file and
// folder, a sharded index, and the refusals (pickle, empty folder).
package controlnet

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/safetensors"
)

// diffusersSpecs renames ldm ControlNet specs with the diffusers table.
func diffusersSpecs(specs []safetensors.Spec) []safetensors.Spec {
	table := models.ControlNetDiffusersTable(4, 2, 6)
	out := make([]safetensors.Spec, len(specs))
	for i, s := range specs {
		best := ""
		to := ""
		for _, p := range table {
			if (s.Name == p.LDM || strings.HasPrefix(s.Name, p.LDM+".")) && len(p.LDM) > len(best) {
				best, to = p.LDM, p.Diffusers
			}
		}
		out[i] = s
		if best != "" {
			out[i].Name = to + strings.TrimPrefix(s.Name, best)
		}
	}
	return out
}

func TestLoadForms(t *testing.T) {
	dir := t.TempDir()
	layout := models.Tiny(1000)
	write := func(path string, specs []safetensors.Spec) string {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := models.WriteRandom(path, specs, 7, nil); err != nil {
			t.Fatal(err)
		}
		return path
	}
	prefixed := write(filepath.Join(dir, "control_sd15.safetensors"), layout.ControlNetSpecs(safetensors.F32, "control_model."))
	bare := write(filepath.Join(dir, "control-fp16.safetensors"), layout.ControlNetSpecs(safetensors.F16, ""))
	diffFile := write(filepath.Join(dir, "diffusers", "diffusion_pytorch_model.fp16.safetensors"), diffusersSpecs(layout.ControlNetSpecs(safetensors.F16, "")))
	shardDir := filepath.Join(dir, "sharded")
	shard := write(filepath.Join(shardDir, "part-1.safetensors"), diffusersSpecs(layout.ControlNetSpecs(safetensors.BF16, "")))
	weightMap := map[string]string{}
	for _, s := range diffusersSpecs(layout.ControlNetSpecs(safetensors.BF16, "")) {
		weightMap[s.Name] = filepath.Base(shard)
	}
	idx, _ := json.Marshal(map[string]any{"weight_map": weightMap})
	if err := os.WriteFile(filepath.Join(shardDir, "diffusion_pytorch_model.safetensors.index.json"), idx, 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, path string
		want       models.ControlNetLayout
		wantErr    string
	}{
		{"ldm prefixed fp32", prefixed, models.ControlNetLDM, ""},
		{"bare fp16", bare, models.ControlNetBare, ""},
		{"diffusers file", diffFile, models.ControlNetDiffusers, ""},
		{"diffusers folder", filepath.Dir(diffFile), models.ControlNetDiffusers, ""},
		{"sharded folder", shardDir, models.ControlNetDiffusers, ""},
		{"pickle", filepath.Join(dir, "control_v11p_sd15_canny.pth"), "", "pickle"},
		{"empty folder", empty, "", "diffusion_pytorch_model"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			net, layout, err := loadNet(tt.path, models.SD1Heads)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if layout != tt.want {
				t.Fatalf("layout %q, want %q", layout, tt.want)
			}
			if net.Config.ModelChannels != models.Tiny(1000).ModelChannels || len(net.Unused) != 0 {
				t.Fatalf("config %+v, unused %v", net.Config, net.Unused)
			}
		})
	}
}
