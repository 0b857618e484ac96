// png_parameters_test.go checks the plugins' infotext fields: LoRA prompt
// tags and hashes, ControlNet units and extra fields, as A1111 writes them.
package host

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/safetensors"
)

func TestPluginInfotext(t *testing.T) {
	dir := t.TempDir()
	lora := filepath.Join(dir, "my-style.v2.safetensors")
	data := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	if err := safetensors.WriteFile(lora, []safetensors.TensorData{
		{Spec: safetensors.Spec{Name: "lora_unet_x.lora_down.weight", DType: safetensors.F32, Shape: []int{2}}, Data: data},
	}, map[string]string{"ss_network_dim": "4"}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data) // the tensor data after the header
	hash := hex.EncodeToString(sum[:])[:12]

	tests := []struct {
		name                 string
		loras                []LoRASpec
		wantTags, wantHashes string
	}{
		{"one strength", []LoRASpec{{Path: lora, UNet: 0.8, TE: 0.8}}, " <lora:my-style.v2:0.8>", "my-style.v2: " + hash},
		{"separate strengths and blocks", []LoRASpec{{Path: lora, UNet: 1, TE: 0.5, Blocks: []float64{1, 0, 0.5}}},
			" <lora:my-style.v2:te=0.5:unet=1:lbw=1,0,0.5>", "my-style.v2: " + hash},
		{"two", []LoRASpec{{Path: lora, UNet: 1, TE: 1}, {Path: lora, UNet: 0.3, TE: 0.3}},
			" <lora:my-style.v2:1> <lora:my-style.v2:0.3>", "my-style.v2: " + hash + ", my-style.v2: " + hash},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tags, hashes, err := LoRAInfotext(tt.loras)
			if err != nil {
				t.Fatal(err)
			}
			if tags != tt.wantTags || hashes != (InfoField{"Lora hashes", tt.wantHashes}) {
				t.Errorf("got %q, %+v; want %q, %q", tags, hashes, tt.wantTags, tt.wantHashes)
			}
		})
	}
	if _, _, err := LoRAInfotext([]LoRASpec{{Path: filepath.Join(dir, "none.safetensors")}}); err == nil || !strings.Contains(err.Error(), "none.safetensors") {
		t.Errorf("missing file: err = %v", err)
	}

	cn := ControlNetInfotext(1, ControlNetInfo{Preprocess: "canny:50:150", Model: "/m/control_v11p_sd15_canny.safetensors",
		Weight: 0.9, Resize: "pad", Start: 0.1, End: 0.8, Guess: true})
	p := Parameters{Prompt: "cat" + " <lora:x:1>", Steps: 1, Sampler: "euler", Schedule: "karras", CFG: 7, Seed: 1, Width: 64, Height: 64,
		Extra: []InfoField{{"Lora hashes", "x: abc"}, cn, {"ELLA", "ella-sd1.5"}}}
	want := `cat <lora:x:1>
Steps: 1, Sampler: Euler, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 64x64, RNG: CPU, Lora hashes: "x: abc", ` +
		`ControlNet 1: "Module: canny, Model: control_v11p_sd15_canny, Weight: 0.9, Resize Mode: Resize and Fill, Threshold A: 50, ` +
		`Threshold B: 150, Guidance Start: 0.1, Guidance End: 0.8, Control Mode: ControlNet is more important", ELLA: ella-sd1.5`
	if got := p.String(); got != want {
		t.Errorf("infotext\n got %s\nwant %s", got, want)
	}
}
