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

	"github.com/google/go-cmp/cmp"

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
			if diff := cmp.Diff(want, p.Keys()); diff != "" {
				t.Errorf("touched keys differ from the case's outputs (-want +got):\n%s", diff)
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

// TestApplyConcurrent merges every tensor of the golden LoHa and LoRA plans
// from many goroutines at once (lazy factor loading and scratch pools are
// shared) and checks the result equals a sequential merge bit for bit.
func TestApplyConcurrent(t *testing.T) {
	ckpt, err := safetensors.Open(goldenFile(t, "models/sd15-tiny.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	for _, name := range []string{"loha", "kohya_diffusers"} {
		t.Run(name, func(t *testing.T) {
			load := func() *Plan {
				f, err := Load(goldenFile(t, "models/lora-"+name+".safetensors"))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { f.Close() })
				p, err := NewPlan(ckpt, []Adapter{{File: f, UNet: 0.9, TE: 0.4}})
				if err != nil {
					t.Fatal(err)
				}
				return p
			}
			seq, par := load(), load()
			keys := seq.Keys()
			want := map[string][]float32{}
			for _, k := range keys {
				tt, _ := ckpt.Get(k)
				orig, _ := tt.Float32()
				want[k] = make([]float32, len(orig))
				if err := seq.Apply(k, orig, want[k]); err != nil {
					t.Fatal(err)
				}
			}
			got := make([][]float32, len(keys))
			errs := make(chan error, len(keys))
			done := make(chan struct{})
			for i, k := range keys {
				go func() {
					defer func() { done <- struct{}{} }()
					tt, _ := ckpt.Get(k)
					w, _ := tt.Float32()
					errs <- par.Apply(k, w, w)
					got[i] = w
				}()
			}
			for range keys {
				<-done
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			for i, k := range keys {
				if !slices.Equal(got[i], want[k]) {
					t.Errorf("%s differs between concurrent and sequential merges", k)
				}
			}
		})
	}
}
