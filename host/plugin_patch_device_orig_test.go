// plugin_patch_device_orig_test.go checks restores from device originals
// (plugin_patch_device_orig.go) across 20 LoRA swaps through the real LoRA
// plugin process, on the stand-in driver + emulator: every swap matches the
// host-memory patch (rel L2 <= 1e-6 F32, <= 2e-3 F16), the final reset is
// bit-exact against the checkpoint's values (rounded to F16 for F16
// weights), and the counters show where each restore came from: with room,
// every restore is a queued device copy and nothing is uploaded from the
// host after the one staging per weight; with a 1-byte cap, every restore
// is a host upload (the fallback). A swap's restores capture into one CUDA
// graph (no synchronising call), and the plugin's one pass from device
// originals sent by IPC is checked too. TestDeviceOriginalsRoom covers the
// cap and the free-memory check (cuMemGetInfo) that pick the fallback.
package host

import (
	"context"
	"math"
	"slices"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

func TestLoRADeviceOriginalsSwaps(t *testing.T) {
	if !cudatest.InChild() {
		t.Log(cudatest.RunChild(t, "TestLoRADeviceOriginalsSwaps", cudatest.Build(t)))
		return
	}
	ctx := context.Background()
	dev, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	f := newDeviceSwapFixture(t, "orig-test")
	p, params, hostTargets, originals, want, pristine := f.p, f.params, f.hostTargets, f.originals, f.want, f.pristine

	cases := []struct {
		name     string
		dtype    nn.GPUDType
		capBytes int64
		fallback bool
	}{
		{"F32 device originals", nn.GPUF32, 0, false},
		{"F16 device originals", nn.GPUF16, 0, false},
		{"F16 over a 1-byte cap: host fallback", nn.GPUF16, 1, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := &nn.GPU{Dev: dev, DType: tc.dtype}
			weights := map[string]*nn.GPUTensor{}
			for _, ht := range hostTargets {
				w, err := g.Upload(nn.From(slices.Clone(originals[ht.Name]), ht.Shape...))
				if err != nil {
					t.Fatal(err)
				}
				defer w.Free()
				weights[ht.Name] = w
			}
			set := NewDeviceArenaSet("weights "+tc.name, true)
			defer set.Close()
			defer func() { p.Unmap(context.Background(), set.Arenas()...) }() // before the weights are freed
			origs := NewDeviceOriginals(dev, tc.capBytes, 1)
			defer origs.Close()
			targets, err := DevicePatchTargetsWith(pristine, set, func(pt *PatchTarget) *nn.GPUTensor { return weights[pt.Name] },
				func(*cuda.Device) *DeviceOriginals { return origs })
			if err != nil {
				t.Fatal(err)
			}
			devW, err := NewWeightPatch(targets)
			if err != nil {
				t.Fatal(err)
			}
			download := func() map[string][]float32 {
				out := map[string][]float32{}
				for name, w := range weights {
					v, err := w.Download()
					if err != nil {
						t.Fatal(err)
					}
					out[name] = v.Data
				}
				return out
			}
			tol := 1e-6
			if tc.dtype == nn.GPUF16 {
				tol = 2e-3
			}
			restores, touched := 0, map[string]bool{}
			var touchedA []string
			var firstA map[string][]float32
			const swaps = 20
			for i := range swaps {
				rep, err := devW.Apply(ctx, p, params[i%2])
				if err != nil {
					t.Fatalf("swap %d: %v", i, err)
				}
				restores += rep.Restored
				for _, n := range rep.Touched {
					touched[n] = true
				}
				got := download()
				for name, w := range want[i%2] {
					if r := nn.RelL2(got[name], w); r > tol || math.IsNaN(r) {
						t.Fatalf("swap %d: %s: device vs host rel L2 %.3g > %g", i, name, r, tol)
					}
				}
				if i == 0 {
					firstA, touchedA = got, rep.Touched
				} else if i%2 == 0 && !sameWeights(firstA, got) {
					t.Fatalf("swap %d: patch A not reproduced bit-exactly", i)
				}
			}
			// The restore path makes no call that waits for the device: the
			// restores of a whole swap capture into one CUDA graph (the
			// stand-in refuses synchronous calls under capture). The host
			// fallback's uploads do wait, and break the capture.
			gr, err := dev.Capture(func() error {
				for _, tg := range targets {
					if touched[tg.Name] {
						if err := tg.Device.Restore(); err != nil {
							return err
						}
					}
				}
				return nil
			})
			if tc.fallback {
				if err == nil {
					gr.Close()
					t.Fatal("host-fallback restores captured into a graph: they should synchronise")
				}
			} else {
				if err != nil {
					t.Fatalf("restores from device originals do not capture (a sync on the restore path?): %v", err)
				}
				restores += len(touched)
				if err := gr.Launch(); err != nil {
					t.Fatal(err)
				}
				if err := gr.Close(); err != nil {
					t.Fatal(err)
				}
				if got := download(); !sameWeights(restored(originals, tc.dtype), got) {
					t.Fatal("the captured restore graph did not restore the weights bit-exactly")
				}
			}
			if !tc.fallback {
				// One pass across processes: the plugin gets each weight's
				// device original as a read-only input (IPC of the originals'
				// arena) and writes W = W_orig + delta over garbage.
				defer func() { p.Unmap(context.Background(), origs.Arenas()...) }()
				req := &sdk.PatchWeightsRequest{Params: params[0]}
				for _, name := range touchedA {
					tg := devW.targets[name]
					in, ok, err := tg.Device.Original()
					if err != nil || !ok {
						t.Fatalf("%s: no device original ref (%v)", name, err)
					}
					req.Inputs = append(req.Inputs, sdk.Ref(in))
					req.Tensors = append(req.Tensors, sdk.Ref(devW.refs[name]))
					if err := weights[name].Buf.FillUint32Async(0x7fc00000, weights[name].Buf.Size/4); err != nil { // NaN
						t.Fatal(err)
					}
				}
				if _, err := p.PatchWeights(ctx, req); err != nil {
					t.Fatalf("one-pass PatchWeights with device originals: %v", err)
				}
				got := download()
				for _, name := range touchedA {
					if r := nn.RelL2(got[name], want[0][name]); r > tol || math.IsNaN(r) {
						t.Fatalf("one pass from the device original: %s rel L2 %.3g > %g", name, r, tol)
					}
				}
				devW.patched = map[string]bool{}
				for _, name := range touchedA {
					devW.patched[name] = true
				}
			}
			restores += len(devW.patched) // the reset restores the last patch's tensors
			if err := devW.Reset(); err != nil {
				t.Fatal(err)
			}
			got := download()
			for name, exp := range restored(originals, tc.dtype) {
				for i := range exp {
					if math.Float32bits(got[name][i]) != math.Float32bits(exp[i]) {
						t.Fatalf("%s[%d] = %v after %d swaps and a reset, checkpoint value %v", name, i, got[name][i], swaps, exp[i])
					}
				}
			}
			st := origs.Stats()
			t.Logf("%s: %d restores over %d swaps + reset: %s", tc.name, restores, swaps, st)
			n, size, held := len(touched), int64(0), int64(0) // originals are made for touched weights only
			for name := range touched {
				b := len(originals[name]) * weights[name].DType.Size()
				size, held = size+int64(b), held+alignUp(b)
			}
			wantSt := OriginalsStats{Originals: n, OriginalBytes: held, DeviceCopies: restores, StagedBytes: size}
			if tc.fallback {
				// Weights differ in size: check the count, and bytes only as bounds.
				if st.HostUploads != restores || st.Fallbacks != n || st.Originals != 0 || st.DeviceCopies != 0 || st.HostBytes < size {
					t.Fatalf("stats %+v, want %d host uploads, %d fallbacks, no device copies", st, restores, n)
				}
			} else if st != wantSt {
				t.Fatalf("stats %+v, want %+v (no host upload on the restore path)", st, wantSt)
			}
		})
	}
}

// restored is originals as a device weight of dtype dt holds them.
func restored(originals map[string][]float32, dt nn.GPUDType) map[string][]float32 {
	if dt != nn.GPUF16 {
		return originals
	}
	out := map[string][]float32{}
	for name, v := range originals {
		r := make([]float32, len(v))
		safetensors.F16ToF32(r, toHalf(v))
		out[name] = r
	}
	return out
}

func toHalf(v []float32) []uint16 {
	h := make([]uint16, len(v))
	for i, x := range v {
		h[i] = safetensors.F32ToF16(x)
	}
	return h
}

// TestDeviceOriginalsRoom checks when a weight gets a device original: the
// cap and the free device memory (the stand-in reports 1 GiB free) decide,
// and every restore is bit-exact whichever way it goes.
func TestDeviceOriginalsRoom(t *testing.T) {
	if !cudatest.InChild() {
		cudatest.RunChild(t, "TestDeviceOriginalsRoom", cudatest.Build(t))
		return
	}
	dev, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	const n = 1024 // values per weight: 4096 bytes in F32, a multiple of cuda.ArenaAlign
	cases := []struct {
		name      string
		capBytes  int64
		reserve   uint64
		originals int // of 3 weights
	}{
		{"no cap", 0, 1, 3},
		{"cap fits two", 2 * 4 * n, 1, 2},
		{"cap below one weight", 4*n - 1, 1, 0},
		{"device short of memory (reserve above free)", 0, 2 << 30, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := NewDeviceOriginals(dev, tc.capBytes, tc.reserve)
			defer o.Close()
			var restores []func() error
			var bufs []*cuda.Buffer
			var hosts [][]float32
			for i := range 3 {
				host := make([]float32, n)
				for j := range host {
					host[j] = float32(i*n+j) * 0.37
				}
				b, err := dev.Alloc(4 * n)
				if err != nil {
					t.Fatal(err)
				}
				defer b.Free()
				restores = append(restores, o.Restore("w"+string(rune('0'+i)), b, sdk.F32, host))
				bufs, hosts = append(bufs, b), append(hosts, host)
			}
			for round := range 2 {
				for i, r := range restores {
					if err := bufs[i].FillUint32(0x7fc00000, n); err != nil { // NaN
						t.Fatal(err)
					}
					if err := r(); err != nil {
						t.Fatal(err)
					}
					got := make([]float32, n)
					if err := bufs[i].DownloadFloat32(got); err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(got, hosts[i]) {
						t.Fatalf("round %d: weight %d not restored exactly", round, i)
					}
				}
			}
			st := o.Stats()
			want := OriginalsStats{Originals: tc.originals, OriginalBytes: int64(tc.originals * 4 * n),
				DeviceCopies: 2 * tc.originals, HostUploads: 2 * (3 - tc.originals), HostBytes: int64(2 * (3 - tc.originals) * 4 * n),
				StagedBytes: int64(tc.originals * 4 * n), Fallbacks: 3 - tc.originals}
			if st != want {
				t.Fatalf("stats %+v\nwant %+v", st, want)
			}
		})
	}
}
