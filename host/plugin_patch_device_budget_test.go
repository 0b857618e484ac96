// plugin_patch_device_budget_test.go: the LoRA swap budget on the GPU
// path, counted by the stand-in driver itself (cudatest.Counters), per
// process, on the one-pass path: the host sends each weight's device
// original (plugin_patch.go) and the LoRA plugin writes W = W_orig + delta
// in one lora_batch launch (plugins/lora/device_batch.go). A cached swap
// (adapters, originals and job tables all resident) must cost, in the
// host process, exactly 1 stream sync (SyncForPlugin) and nothing else on
// the device, and in the plugin process exactly 1 kernel launch and 1
// stream sync (the SDK's, before the reply): 0 bytes over PCIe either
// way, no allocation, no copy. Each swap still matches the host-memory
// patch (rel L2 <= 1e-6 F32, <= 2e-3 F16).
package host

import (
	"context"
	"math"
	"os"
	"slices"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/nn"
)

func TestLoRADeviceSwapBudget(t *testing.T) {
	if !cudatest.InChild() {
		t.Log(cudatest.RunChild(t, "TestLoRADeviceSwapBudget", cudatest.Build(t)))
		return
	}
	ctx := context.Background()
	dumps := cudatest.CountersDir(t) // before the plugin starts: it inherits it
	dev, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	f := newDeviceSwapFixture(t, "budget-test")
	p, params, hostTargets, originals, want, pristine := f.p, f.params, f.hostTargets, f.originals, f.want, f.pristine
	// pluginCounters is the plugin process's dump (as of its last sync;
	// zero before it synchronised).
	pluginCounters := func() cudatest.Counters {
		all, err := cudatest.ReadCountersDir(dumps)
		if err != nil {
			t.Fatal(err)
		}
		delete(all, os.Getpid())
		if len(all) > 1 {
			t.Fatalf("%d plugin processes dumped counters, want 1", len(all))
		}
		for _, c := range all {
			return c
		}
		return cudatest.Counters{}
	}
	cases := []struct {
		name  string
		dtype nn.GPUDType
		tol   float64
	}{
		{"F32", nn.GPUF32, 1e-6},
		{"F16", nn.GPUF16, 2e-3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := &nn.GPU{Dev: dev, DType: tc.dtype}
			weights := map[string]*nn.GPUTensor{}
			for _, ht := range hostTargets {
				w, err := g.Upload(nn.From(slices.Clone(originals[ht.Name]), ht.Shape...)) // [out, in, ...]
				if err != nil {
					t.Fatal(err)
				}
				defer w.Free()
				weights[ht.Name] = w
			}
			set := NewDeviceArenaSet("budget weights "+tc.name, true)
			defer set.Close()
			origs := NewDeviceOriginals(dev, 0, 1)
			defer origs.Close()
			defer func() { p.Unmap(context.Background(), append(set.Arenas(), origs.Arenas()...)...) }()
			targets, err := DevicePatchTargetsWith(pristine, set, func(pt *PatchTarget) *nn.GPUTensor { return weights[pt.Name] },
				func(*cuda.Device) *DeviceOriginals { return origs })
			if err != nil {
				t.Fatal(err)
			}
			devW, err := NewWeightPatch(targets)
			if err != nil {
				t.Fatal(err)
			}
			// Swaps 0-3 warm up: the first patch restores (making the
			// originals) and stages A's factors, the second stages B's and
			// its one-pass job table, the third A's one-pass table.
			const warm, swaps = 4, 8
			for i := range swaps {
				hostBefore, err := cudatest.ReadCounters()
				if err != nil {
					t.Fatal(err)
				}
				plugBefore := pluginCounters()
				rep, err := devW.Apply(ctx, p, params[i%2])
				if err != nil {
					t.Fatalf("swap %d: %v", i, err)
				}
				hostAfter, err := cudatest.ReadCounters()
				if err != nil {
					t.Fatal(err)
				}
				plug := pluginCounters().Sub(plugBefore)
				host := hostAfter.Sub(hostBefore)
				if i == 0 && (rep.OnePass != 0 || rep.Restored != len(rep.Touched)) {
					t.Fatalf("first patch: %d one-pass, %d restored of %d touched; want all restored (no original yet)", rep.OnePass, rep.Restored, len(rep.Touched))
				}
				if i > 0 && (rep.OnePass != len(rep.Touched) || rep.Restored != 0) {
					t.Fatalf("swap %d: %d one-pass, %d restored of %d touched; want all one-pass", i, rep.OnePass, rep.Restored, len(rep.Touched))
				}
				for name, w := range weights {
					v, err := w.Download()
					if err != nil {
						t.Fatal(err)
					}
					if r := nn.RelL2(v.Data, want[i%2][name]); r > tc.tol || math.IsNaN(r) {
						t.Fatalf("swap %d: %s: device vs host rel L2 %.3g > %g", i, name, r, tc.tol)
					}
				}
				if i < warm {
					t.Logf("warm-up swap %d: host %s; plugin %s", i, host, plug)
					continue
				}
				if wantHost := (cudatest.Counters{StreamSyncs: 1}); host != wantHost {
					t.Errorf("swap %d: host process counted %s\nwant %s", i, host, wantHost)
				}
				if wantPlug := (cudatest.Counters{StreamSyncs: 1, Launches: 1}); plug != wantPlug {
					t.Errorf("swap %d: plugin process counted %s\nwant %s", i, plug, wantPlug)
				}
			}
			if err := devW.Reset(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
