package host

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// deviceSwapFixture is what the device LoRA swap tests share: two rank-8
// LoRAs over the SD1.5 attention modules of a written checkpoint, the LoRA
// plugin process set to cuda:0, and the host-memory patches each device
// patch must match.
type deviceSwapFixture struct {
	p           *Plugin
	params      []sdk.Params // LoRA a (unet 0.8, te 0.5), then LoRA b (unet 0.6)
	hostTargets []*PatchTarget
	originals   map[string][]float32    // the unpatched weights, by name
	want        [2]map[string][]float32 // the weights after params[i], patched in host memory
	pristine    []*PatchTarget          // hostTargets over copies of originals
}

// newDeviceSwapFixture builds the fixture; it starts the plugin, so a
// test that counts the plugin's calls sets cudatest.CountersDir first.
func newDeviceSwapFixture(t *testing.T, name string) *deviceSwapFixture {
	t.Helper()
	dir := t.TempDir()
	ms := sd15AttentionModules(32)
	loraA, loraB := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
	writeBenchLoRA(t, loraA, ms, 8, 1)
	writeBenchLoRA(t, loraB, ms, 8, 2)
	ckpt, orig := writeBenchCheckpoint(t, filepath.Join(dir, "model.safetensors"), ms)
	t.Cleanup(func() { orig.Close(); ckpt.Close() })
	pool := NewArenaPool(name, 4<<20, true)
	t.Cleanup(func() { pool.Close() })
	f := &deviceSwapFixture{p: loraTestPlugin(t), params: []sdk.Params{
		{{Name: "lora", Value: loraA}, {Name: "unet", Value: "0.8"}, {Name: "te", Value: "0.5"}},
		{{Name: "lora", Value: loraB}, {Name: "unet", Value: "0.6"}},
	}}
	f.hostTargets, _ = benchTargets(t, pool, ckpt, orig, false)
	hostW, err := NewWeightPatch(f.hostTargets)
	if err != nil {
		t.Fatal(err)
	}
	f.originals = snapshotTargets(f.hostTargets)
	f.p.SetDevice("cuda:0")
	for i, ps := range f.params {
		if _, err := hostW.Apply(context.Background(), f.p, ps); err != nil {
			t.Fatal(err)
		}
		f.want[i] = snapshotTargets(f.hostTargets)
	}
	if err := hostW.Reset(); err != nil {
		t.Fatal(err)
	}
	for _, ht := range f.hostTargets {
		c := *ht
		c.Data = f.originals[ht.Name]
		f.pristine = append(f.pristine, &c)
	}
	return f
}
