// golden_test.go checks, on the shared golden adapters (read from
// ../shared/golden at test time, skipped when absent), what the golden
// harness does not: that a plan touches exactly the tensors each case lists
// (no more, no fewer), and that Describe reports each file's format. The
// merged values themselves are checked by golden/run_lora_merge_test.go.
package lora

import (
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/safetensors"
)

func TestGoldenPlanKeys(t *testing.T) {
	ckptPath := goldenFile(t, "models/sd15-tiny.safetensors")
	ckpt, err := safetensors.Open(ckptPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	ix := NewIndex(ckpt)
	tests := []struct {
		name, format, naming string
		dora                 bool
	}{
		{"kohya_diffusers", "LoRA + LoCon", "kohya", false},
		{"kohya_ldm", "LoRA + LoCon", "kohya (ldm names)", false},
		{"loha", "LoHa", "kohya", false},
		{"lokr", "LoKr", "kohya", false},
		{"peft", "LoRA", "PEFT/diffusers", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			io, err := safetensors.Open(goldenFile(t, "cases/lora_merge_"+tt.name+"/io.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer io.Close()
			var want []string
			for _, n := range io.Names() {
				if k, ok := strings.CutPrefix(n, "out."); ok {
					want = append(want, k)
				}
			}
			slices.Sort(want)
			f, err := Load(goldenFile(t, "models/lora-"+tt.name+".safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			p, err := ix.Plan([]Adapter{{File: f, UNet: 1, TE: 1}})
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Keys(); !slices.Equal(got, want) {
				t.Errorf("plan touches %d keys, the case lists %d", len(got), len(want))
			}
			in := Describe(f)
			if in.Format != tt.format || in.Naming != tt.naming || in.DoRA != tt.dora || in.Modules != len(want) {
				t.Errorf("Describe = format %q naming %q dora %v modules %d; want %q %q %v %d",
					in.Format, in.Naming, in.DoRA, in.Modules, tt.format, tt.naming, tt.dora, len(want))
			}
			if in.String() == "" {
				t.Error("empty summary")
			}
		})
	}
}
