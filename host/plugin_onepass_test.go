// plugin_onepass_test.go checks one-pass LoRA patching (the plugin reads
// the fp16 originals from the mapped checkpoint and writes the patched
// weights; plugin_patch.go) through the real LoRA plugin process against the
// two-pass path (host restores, plugin patches in place): bit-identical
// weights after patches, swaps to a LoRA touching fewer tensors, and resets;
// and a checkpoint that shrinks under its mapping is refused before any
// write.
package host

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// loraTestPlugin starts the LoRA plugin (this test binary re-executed).
func loraTestPlugin(t testing.TB) *Plugin {
	t.Helper()
	sup, err := NewSupervisor(Options{LogOutput: io.Discard, CallTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sup.Close() })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p, err := sup.Register(Spec{Name: "lora", Path: exe, Args: []string{"-test.run=^$"}, Env: []string{"SDBRIDGE_TEST_PLUGIN=lora"}, BuiltIn: true})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func snapshotTargets(ts []*PatchTarget) map[string][]float32 {
	out := map[string][]float32{}
	for _, t := range ts {
		out[t.Name] = slices.Clone(t.Data)
	}
	return out
}

func TestLoRAOnePassMatchesTwoPass(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ms := sd15AttentionModules(32)
	var teOnly []benchModule
	for _, m := range ms {
		if strings.HasPrefix(m.key, "cond_stage_model.") {
			teOnly = append(teOnly, m)
		}
	}
	loraA, loraB, loraC := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors"), filepath.Join(dir, "c.safetensors")
	writeBenchLoRA(t, loraA, ms, 8, 1)
	writeBenchLoRA(t, loraB, ms, 8, 2)
	writeBenchLoRA(t, loraC, teOnly, 8, 3)
	ckpt, orig := writeBenchCheckpoint(t, filepath.Join(dir, "model.safetensors"), ms)
	t.Cleanup(func() { orig.Close(); ckpt.Close() })

	type side struct {
		targets []*PatchTarget
		w       *WeightPatch
	}
	var sides [2]side // 0: two passes, 1: one pass
	for i := range sides {
		pool := NewArenaPool("onepass-test", 4<<20, true)
		t.Cleanup(func() { pool.Close() })
		sides[i].targets, _ = benchTargets(t, pool, ckpt, orig, i == 1)
		w, err := NewWeightPatch(sides[i].targets)
		if err != nil {
			t.Fatal(err)
		}
		sides[i].w = w
	}
	originals := snapshotTargets(sides[0].targets)
	p := loraTestPlugin(t)
	steps := []struct {
		name   string
		params sdk.Params
	}{
		{"patch A", sdk.Params{{Name: "lora", Value: loraA}, {Name: "unet", Value: "0.8"}, {Name: "te", Value: "0.5"}}},
		{"swap to B", sdk.Params{{Name: "lora", Value: loraB}, {Name: "unet", Value: "0.6"}}},
		{"swap to text-encoder-only C", sdk.Params{{Name: "lora", Value: loraC}}},
		{"A and B together", sdk.Params{{Name: "lora", Value: loraA}, {Name: "lora", Value: loraB}, {Name: "unet", Value: "-0.3"}}},
		{"patch A again", sdk.Params{{Name: "lora", Value: loraA}, {Name: "unet", Value: "0.8"}, {Name: "te", Value: "0.5"}}},
		{"reset", nil},
	}
	var firstA map[string][]float32
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			var reps [2]*PatchReport
			for i, s := range sides {
				if st.params == nil {
					if err := s.w.Reset(); err != nil {
						t.Fatal(err)
					}
					continue
				}
				rep, err := s.w.Apply(ctx, p, st.params)
				if err != nil {
					t.Fatal(err)
				}
				reps[i] = rep
			}
			two, one := snapshotTargets(sides[0].targets), snapshotTargets(sides[1].targets)
			if st.params != nil {
				if reps[0].OnePass != 0 || reps[1].OnePass != len(reps[1].Touched) || len(reps[1].Touched) == 0 {
					t.Fatalf("one-pass tensors: two-pass side %d, one-pass side %d of %d", reps[0].OnePass, reps[1].OnePass, len(reps[1].Touched))
				}
			}
			changed := 0
			for name, want := range two {
				if !sameWeights(map[string][]float32{name: want}, map[string][]float32{name: one[name]}) {
					t.Fatalf("%s: one-pass weights differ from two-pass", name)
				}
				if !sameWeights(map[string][]float32{name: want}, map[string][]float32{name: originals[name]}) {
					changed++
				}
			}
			switch {
			case st.params == nil && changed != 0:
				t.Fatalf("reset left %d tensors patched", changed)
			case st.params != nil && changed != len(reps[1].Touched):
				t.Fatalf("%d tensors differ from the checkpoint, %d touched", changed, len(reps[1].Touched))
			}
			if st.name == "patch A" {
				firstA = two
			}
			if st.name == "patch A again" && !sameWeights(firstA, one) {
				t.Fatal("patch A not reproduced bit-exactly after swaps")
			}
		})
	}
}

func TestLoRAOnePassShrunkCheckpoint(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ms := sd15AttentionModules(32)[:4]
	loraA, loraB := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
	writeBenchLoRA(t, loraA, ms, 4, 1)
	writeBenchLoRA(t, loraB, ms, 4, 2)
	path := filepath.Join(dir, "model.safetensors")
	ckpt, orig := writeBenchCheckpoint(t, path, ms)
	t.Cleanup(func() { orig.Close(); ckpt.Close() })
	pool := NewArenaPool("onepass-shrunk", 1<<20, true)
	t.Cleanup(func() { pool.Close() })
	targets, _ := benchTargets(t, pool, ckpt, orig, true)
	w, err := NewWeightPatch(targets)
	if err != nil {
		t.Fatal(err)
	}
	p := loraTestPlugin(t)
	if _, err := w.Apply(ctx, p, sdk.Params{{Name: "lora", Value: loraA}}); err != nil {
		t.Fatal(err)
	}
	before := snapshotTargets(targets)
	if err := os.Truncate(path, ckpt.Size()/2); err != nil {
		t.Fatal(err)
	}
	_, err = w.Apply(ctx, p, sdk.Params{{Name: "lora", Value: loraB}})
	if err == nil || !strings.Contains(err.Error(), "shrank") {
		t.Fatalf("err = %v, want the shrunk checkpoint refused", err)
	}
	if !sameWeights(before, snapshotTargets(targets)) {
		t.Fatal("weights changed by the refused call")
	}
}

// A checkpoint replaced (renamed over) after it was mapped is not shared:
// the plugin would read other bytes than the host restores from.
func TestCheckpointArenaReplacedFile(t *testing.T) {
	dir := t.TempDir()
	ms := sd15AttentionModules(32)[:2]
	path := filepath.Join(dir, "model.safetensors")
	ckpt, orig := writeBenchCheckpoint(t, path, ms)
	orig.Close()
	t.Cleanup(func() { ckpt.Close() })
	other, otherArena := writeBenchCheckpoint(t, filepath.Join(dir, "other.safetensors"), ms)
	otherArena.Close()
	other.Close()
	if err := os.Rename(filepath.Join(dir, "other.safetensors"), path); err != nil {
		t.Fatal(err)
	}
	if a, err := CheckpointArena(ckpt); err == nil || !strings.Contains(err.Error(), "replaced") {
		if a != nil {
			a.Close()
		}
		t.Fatalf("err = %v, want the replaced file refused", err)
	}
}
