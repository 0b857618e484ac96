// plugin_patch_device_test.go: LoRA patching of weights on the GPU across
// processes. The host registers each weight's device allocation as a device
// arena; the real LoRA plugin process opens them by CUDA IPC handle and
// merges there (stand-in driver with memfd-backed IPC and the CUDA C
// emulator, in a child test process). Each step (patch, swaps, two
// adapters, reset) is checked against the same steps on host-memory
// weights: rel L2 <= 1e-6 per tensor for F32 device weights (fp32 GEMMs in
// another order), <= 2e-3 for F16 ones (made by DevicePatchTargets), with
// restores and a repeated patch bit-exact on the device.
package host

import (
	"context"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

func TestLoRADevicePatchMatchesHost(t *testing.T) {
	if !cudatest.InChild() {
		cudatest.RunChild(t, "TestLoRADevicePatchMatchesHost", cudatest.Build(t))
		return
	}
	ctx := context.Background()
	dev, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
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

	pool := NewArenaPool("device-test", 4<<20, true)
	t.Cleanup(func() { pool.Close() })
	hostTargets, _ := benchTargets(t, pool, ckpt, orig, false)
	hostW, err := NewWeightPatch(hostTargets)
	if err != nil {
		t.Fatal(err)
	}
	originals := snapshotTargets(hostTargets)

	set := NewDeviceArenaSet("weights", true)
	defer set.Close()
	bufs := map[string]*cuda.Buffer{}
	var devTargets []*PatchTarget
	for _, ht := range hostTargets {
		b, err := dev.Alloc(4 * len(ht.Data))
		if err != nil {
			t.Fatal(err)
		}
		defer b.Free()
		if err := b.UploadFloat32(originals[ht.Name]); err != nil {
			t.Fatal(err)
		}
		if err := set.Add(b); err != nil {
			t.Fatal(err)
		}
		bufs[ht.Name] = b
		devTargets = append(devTargets, &PatchTarget{Name: ht.Name, Shape: ht.Shape,
			Device: &DeviceWeight{Buf: b, DType: sdk.F32, Restore: RestoreFromHost(b, sdk.F32, originals[ht.Name])}})
	}
	devW, err := NewWeightPatch(devTargets)
	if err != nil {
		t.Fatal(err)
	}
	// The same weights in F16 on the device, through DevicePatchTargets.
	g := &nn.GPU{Dev: dev, DType: nn.GPUF16}
	halves := map[string]*nn.GPUTensor{}
	for _, ht := range hostTargets {
		w, err := g.Upload(nn.From(slices.Clone(originals[ht.Name]), ht.Shape...))
		if err != nil {
			t.Fatal(err)
		}
		defer w.Free()
		halves[ht.Name] = w
	}
	set16 := NewDeviceArenaSet("weights-f16", true)
	defer set16.Close()
	// The host copies DevicePatchTargets restores from must stay unpatched:
	// here the host side is patched too, so give it the snapshot.
	var pristine []*PatchTarget
	for _, ht := range hostTargets {
		c := *ht
		c.Data = originals[ht.Name]
		pristine = append(pristine, &c)
	}
	t16, err := DevicePatchTargets(pristine, set16, func(pt *PatchTarget) *nn.GPUTensor { return halves[pt.Name] })
	if err != nil {
		t.Fatal(err)
	}
	devW16, err := NewWeightPatch(t16)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		// DevicePatchTargets kept the originals on the device (1 GiB free on
		// the stand-in, above DefaultOriginalsReserve): no restore went to
		// the host.
		st := DeviceOriginalsOf(set16).Stats()
		if st.HostUploads != 0 || st.DeviceCopies == 0 || st.Fallbacks != 0 {
			t.Errorf("F16 restores: %s; want device copies only", st)
		}
		if err := CloseDeviceOriginals(set16); err != nil {
			t.Error(err)
		}
	}()
	download16 := func() map[string][]float32 {
		out := map[string][]float32{}
		for name, w := range halves {
			v, err := w.Download()
			if err != nil {
				t.Fatal(err)
			}
			out[name] = v.Data
		}
		return out
	}
	rounded := map[string][]float32{}
	for name, v := range originals {
		r := make([]float32, len(v))
		for i, x := range v {
			var one [1]float32
			safetensors.F16ToF32(one[:], []uint16{safetensors.F32ToF16(x)})
			r[i] = one[0]
		}
		rounded[name] = r
	}
	p := loraTestPlugin(t)
	p.SetDevice("cuda:0")
	if ok, err := p.TakesDeviceArenas(ctx); err != nil || !ok {
		t.Fatalf("the LoRA plugin does not take device arenas: %v %v", ok, err)
	}
	t.Cleanup(func() { p.Unmap(context.Background(), append(set.Arenas(), set16.Arenas()...)...) })
	download := func() map[string][]float32 {
		out := map[string][]float32{}
		for name, b := range bufs {
			v := make([]float32, b.Size/4)
			if err := b.DownloadFloat32(v); err != nil {
				t.Fatal(err)
			}
			out[name] = v
		}
		return out
	}
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
			if st.params == nil {
				if err := hostW.Reset(); err != nil {
					t.Fatal(err)
				}
				if err := devW.Reset(); err != nil {
					t.Fatal(err)
				}
				if err := devW16.Reset(); err != nil {
					t.Fatal(err)
				}
			} else {
				hr, err := hostW.Apply(ctx, p, st.params)
				if err != nil {
					t.Fatal(err)
				}
				dr, err := devW.Apply(ctx, p, st.params)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(hr.Touched, dr.Touched) || len(dr.Touched) == 0 || dr.OnePass != 0 {
					t.Fatalf("touched: host %d, device %d tensors (device one-pass %d)", len(hr.Touched), len(dr.Touched), dr.OnePass)
				}
				if _, err := devW16.Apply(ctx, p, st.params); err != nil {
					t.Fatal(err)
				}
			}
			host, got, got16 := snapshotTargets(hostTargets), download(), download16()
			for name, want := range host {
				if st.params == nil {
					if !slices.Equal(got16[name], rounded[name]) {
						t.Fatalf("%s: F16 device weight not restored bit-exactly", name)
					}
					continue
				}
				if r := nn.RelL2(got16[name], want); r > 2e-3 || math.IsNaN(r) {
					t.Fatalf("%s: F16 device vs host rel L2 %.3g > 2e-3", name, r)
				}
			}
			changed := 0
			for name, want := range host {
				if !slices.Equal(got[name], originals[name]) {
					changed++
				}
				if st.params == nil {
					if !slices.Equal(got[name], originals[name]) {
						t.Fatalf("%s: not restored bit-exactly on the device", name)
					}
					continue
				}
				if r := nn.RelL2(got[name], want); r > 1e-6 || math.IsNaN(r) {
					t.Fatalf("%s: device vs host rel L2 %.3g > 1e-6", name, r)
				}
			}
			if st.params == nil && changed != 0 {
				t.Fatalf("reset left %d device tensors changed", changed)
			}
			if st.name == "patch A" {
				firstA = got
			}
			if st.name == "patch A again" && !sameWeights(firstA, got) {
				t.Fatal("patch A not reproduced bit-exactly on the device after swaps")
			}
		})
	}
}
