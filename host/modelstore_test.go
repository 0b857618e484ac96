// modelstore_test.go checks the patchable model store on the shared golden
// tiny checkpoint with the real LoRA plugin in its own process (this test
// binary, TestMain serving "lora"): every U-Net and text-encoder tensor is a
// patch target in shared memory, LoRAs apply, swap and restore bit-exactly,
// a refused file changes nothing, and a non-patchable pipeline says why
// (generate's tests refuse an SDXL LoRA through the same path).
package host

import (
	"context"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/safetensors"
)

// bitsOf copies every target's float32 bits, by name.
func bitsOf(s *modelStore) map[string][]uint32 {
	out := map[string][]uint32{}
	for _, t := range s.targets {
		b := make([]uint32, len(t.Data))
		for i, v := range t.Data {
			b[i] = math.Float32bits(v)
		}
		out[t.Name] = b
	}
	return out
}

func sameBitMaps(a, b map[string][]uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for n, x := range a {
		if !slices.Equal(x, b[n]) {
			return false
		}
	}
	return true
}

func TestLoadedApplyLoRAs(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a plugin process")
	}
	ckpt := mergeGolden(t, "models/sd15-tiny.safetensors")
	clip := mergeGolden(t, "data/clip")
	models := filepath.Dir(ckpt)
	opt := LoadOptions{CLIPVocab: filepath.Join(clip, "vocab.json"), CLIPMerges: filepath.Join(clip, "merges.txt")}

	plain, err := LoadPipeline(ckpt, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	sup, err := NewSupervisor(Options{LogOutput: io.Discard, CallTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer sup.Close()
	exe, _ := os.Executable()
	if _, err := sup.Register(Spec{Name: "lora", Path: exe, Args: []string{"-test.run=^$"}, Env: []string{"SDBRIDGE_TEST_PLUGIN=lora"}, BuiltIn: true}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := []LoRASpec{{Path: filepath.Join(models, "lora-kohya_ldm.safetensors"), UNet: 0.8, TE: 0.5}}
	if err := plain.ApplyLoRAs(ctx, sup, a); err == nil || !strings.Contains(err.Error(), "Patchable") {
		t.Fatalf("non-patchable pipeline: err = %v, want one naming LoadOptions.Patchable", err)
	}

	opt.Patchable = true
	p, err := LoadPipeline(ckpt, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	// Every float U-Net and text-encoder tensor is a target; nothing else is.
	f, err := safetensors.Open(ckpt)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var want []string
	for _, n := range f.Names() {
		info, _ := f.Lookup(n)
		if (strings.HasPrefix(n, "model.diffusion_model.") || strings.HasPrefix(n, "cond_stage_model.")) && info.DType.IsFloat() {
			want = append(want, n)
		}
	}
	var got []string
	for _, tg := range p.store.targets {
		got = append(got, tg.Name)
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("patch targets: %d, want the %d U-Net and text-encoder tensors", len(got), len(want))
	}
	// The checkpoint is shared with the plugin read-only: every target can
	// be patched in one pass from its stored bytes.
	if p.store.orig == nil {
		t.Fatal("the checkpoint is not shared with plugins")
	}
	for _, tg := range p.store.targets {
		if tg.Original == nil {
			t.Fatalf("%s has no original in the checkpoint arena", tg.Name)
		}
	}

	orig := bitsOf(p.store)
	if err := p.ApplyLoRAs(ctx, sup, a); err != nil {
		t.Fatal(err)
	}
	stateA := bitsOf(p.store)
	if sameBitMaps(orig, stateA) {
		t.Fatal("the LoRA changed no weight")
	}
	b := []LoRASpec{
		{Path: filepath.Join(models, "lora-loha.safetensors"), UNet: 1, TE: 1},
		{Path: filepath.Join(models, "lora-peft.safetensors"), UNet: 0.7, TE: 0.3, Blocks: []float64{1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
	}
	for i := range 3 {
		if err := p.ApplyLoRAs(ctx, sup, b); err != nil {
			t.Fatal(err)
		}
		if err := p.ApplyLoRAs(ctx, sup, a); err != nil {
			t.Fatal(err)
		}
		if !sameBitMaps(stateA, bitsOf(p.store)) {
			t.Fatalf("swap %d: weights differ from the first application", i)
		}
	}
	if got := p.LoRAs(); len(got) != 1 || got[0].Path != a[0].Path {
		t.Errorf("LoRAs() = %+v", got)
	}

	// A file that is no LoRA (the checkpoint itself) is refused and changes nothing.
	if err := p.ApplyLoRAs(ctx, sup, []LoRASpec{{Path: ckpt, UNet: 1, TE: 1}}); err == nil || !strings.Contains(err.Error(), "sd15-tiny.safetensors") {
		t.Fatalf("checkpoint as LoRA: err = %v, want a refusal naming the file", err)
	}
	if !sameBitMaps(stateA, bitsOf(p.store)) {
		t.Fatal("a refused LoRA changed the weights")
	}

	if err := p.ApplyLoRAs(ctx, sup, nil); err != nil {
		t.Fatal(err)
	}
	if !sameBitMaps(orig, bitsOf(p.store)) {
		t.Fatal("restoring is not bit-exact")
	}
	if p.LoRAs() != nil {
		t.Errorf("LoRAs() after restore = %+v", p.LoRAs())
	}
	if err := p.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}
