// device_swap_test.go checks a swap on the GPU as the plugin runs it when
// each weight comes with its original as a device input (restore + patch in
// one call): 20 swaps between two plain LoRA adapters over a [70, 130]
// linear (rank 40: 3x3 tiles and two k chunks of lora_batch) and a 3x3
// conv weight, on the stand-ins + emulator, F32 and F16 storage, one
// tensor at a time (copy + GemmEx) and batched (PatchDeviceBatch). Each
// swap matches Apply on the CPU (rel L2 <= 1e-6 F32, <= 2e-3 F16), the
// originals stay bit-exact, and DeviceStats proves the budget: after each
// adapter's first swap, a swap queues one device copy and one GEMM per
// weight and uploads nothing, and such a swap captures into a CUDA graph
// (no call waits for the device: the SDK's one sync before the reply is
// the swap's only one), whose replay gives the same weights.
package lora

import (
	"math"
	"slices"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

func TestDeviceSwapBudget(t *testing.T) {
	if !cudatest.InChild() {
		t.Log(cudatest.RunChild(t, "TestDeviceSwapBudget", cudatest.Build(t)))
		return
	}
	dev, err := sdk.CUDADevice(0)
	if err != nil {
		t.Fatal(err)
	}
	p := NewPlugin()
	f16Gemm := gemmF16Runs(t, p, dev)
	fx := newFixture()
	lin := UNetPrefix + kLinear + ".weight"
	const out, in, rank = 70, 130, 40
	fx.orig[lin] = randn(fx.r, out*in, 0.5)
	fx.ckpt.put(lin, fx.orig[lin], out, in)
	keys := []string{lin, UNetPrefix + kConv + ".weight"}
	var plans [2]*Plan
	for i, strength := range []float64{0.7, -0.4} {
		a := newMem()
		mod := "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"
		a.put(mod+".lora_down.weight", randn(fx.r, rank*in, 1), rank, in).put(mod+".lora_up.weight", randn(fx.r, out*rank, 1), out, rank).put(mod+".alpha", []float32{8}, 1)
		deviceCases()[1].build(fx, a) // LoCon 3x3 on the conv weight
		if plans[i], err = NewPlan(fx.ckpt, []Adapter{{File: parse(t, a, nil), UNet: strength}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		dt    sdk.DType
		batch bool
	}{{sdk.F32, false}, {sdk.F16, false}, {sdk.F32, true}, {sdk.F16, true}} {
		dt := tc.dt
		name := string(dt) + " per tensor"
		if tc.batch {
			name = string(dt) + " batched"
		}
		t.Run(name, func(t *testing.T) {
			if dt == sdk.F16 && !f16Gemm {
				t.Skip("needs F16 GemmEx in the stand-in cuBLAS of cuda/cudatest")
			}
			tol := 1e-6
			if dt == sdk.F16 {
				tol = 2e-3
			}
			type weight struct {
				start   []float32 // the original, as stored in dt
				w, orig *sdk.Tensor
				buf     *cuda.Buffer
				origBuf *cuda.Buffer
				want    [2][]float32
			}
			var ws []*weight
			for _, key := range keys {
				tg, _ := plans[0].Target(key)
				start := fx.orig[key]
				if dt == sdk.F16 {
					start = roundF16(start)
				}
				x := &weight{start: start}
				for i, plan := range plans {
					x.want[i] = make([]float32, len(start))
					if err := plan.Apply(key, start, x.want[i]); err != nil {
						t.Fatal(err)
					}
				}
				for _, b := range []**cuda.Buffer{&x.buf, &x.origBuf} {
					if *b, err = dev.Alloc(len(start) * dt.Size()); err != nil {
						t.Fatal(err)
					}
					defer (*b).Free()
				}
				if err := uploadAs(x.origBuf, dt, start); err != nil {
					t.Fatal(err)
				}
				if err := x.buf.ZeroAsync(); err != nil { // anything: the original comes as the input
					t.Fatal(err)
				}
				ref := sdk.TensorRef{Name: key, DType: dt, Shape: tg.Shape, Writable: true}
				if x.w, err = sdk.BindDeviceTensor(ref, x.buf); err != nil {
					t.Fatal(err)
				}
				ref.Writable = false
				if x.orig, err = sdk.BindDeviceTensor(ref, x.origBuf); err != nil {
					t.Fatal(err)
				}
				ws = append(ws, x)
			}
			n := len(ws)
			swap := func(plan *Plan) error {
				if tc.batch {
					ts, origs := []*sdk.Tensor{}, map[string]*sdk.Tensor{}
					for _, x := range ws {
						ts = append(ts, x.w)
						origs[x.w.Name] = x.orig
					}
					return p.PatchDeviceBatch(plan, ts, origs)
				}
				for _, x := range ws {
					if err := p.patchDevice(plan, x.w, x.orig); err != nil {
						return err
					}
				}
				return nil
			}
			// Per tensor: one device copy + one GemmEx each. Batched: one
			// launch, its job table resident after the adapter's first swap.
			want := DeviceStats{Merges: n, Gemms: n, DeviceRestores: n, FactorHits: 2 * n}
			if tc.batch {
				want = DeviceStats{Merges: n, Batched: n, Kernels: 1, DeviceRestores: n, FactorHits: 2 * n, TableHits: 1}
			}
			staged := false
			for i := range 20 {
				before := p.factors.Stats()
				if err := swap(plans[i%2]); err != nil {
					t.Fatalf("swap %d: %v", i, err)
				}
				d := p.factors.Stats().Sub(before)
				want := want
				want.ResidentBytes, want.ResidentFactors = d.ResidentBytes, d.ResidentFactors
				if i < 2 && d.FactorUploads > 0 { // an adapter's first swap in dt stages its factors in one batch
					staged = true
					want.FactorUploads, want.FactorBytes, want.Batches = 2*n, d.FactorBytes, 1 // then read from the cache
				}
				if i < 2 && tc.batch {
					want.TableHits, want.TableUploads = 0, 1
				}
				if i >= 2 && d.FactorUploads > 0 || d.FactorUploads > 0 && d.FactorBytes <= 0 {
					t.Fatalf("swap %d: factors staged again: %s", i, d)
				}
				if d != want {
					t.Fatalf("swap %d: %s\nwant %s", i, d, want)
				}
				if i == 19 {
					t.Logf("%s swap %d: %s", dt, i, d)
				}
				for _, x := range ws {
					got := make([]float32, len(x.start))
					if err := downloadAs(x.buf, dt, got); err != nil {
						t.Fatal(err)
					}
					exp := x.want[i%2]
					if dt == sdk.F16 {
						exp = roundF16(exp)
					}
					if r := nn.RelL2(got, exp); r > tol || math.IsNaN(r) {
						t.Fatalf("swap %d: %s rel L2 %.3g > %g against Apply", i, x.w.Name, r, tol)
					}
				}
			}
			if !staged && !tc.batch {
				t.Fatal("the first swaps staged no factors")
			}
			// A cached swap makes no call that waits for the device: it
			// captures into one CUDA graph (the stand-ins refuse synchronous
			// calls, allocations and staged uploads under capture), so the
			// SDK's sync before the reply is the swap's only one.
			for _, x := range ws {
				if err := x.buf.ZeroAsync(); err != nil {
					t.Fatal(err)
				}
			}
			before := p.factors.Stats()
			g, err := dev.Capture(func() error { return swap(plans[0]) })
			if err != nil {
				t.Fatalf("a cached swap does not capture into a graph (a sync on the swap path?): %v", err)
			}
			defer g.Close()
			if d := p.factors.Stats().Sub(before); d.Merges != n || d.DeviceRestores != n || d.FactorUploads != 0 || d.TableUploads != 0 || d.BlockingCalls != 0 {
				t.Fatalf("captured swap: %s", d)
			}
			if err := g.Launch(); err != nil {
				t.Fatal(err)
			}
			for _, x := range ws {
				got := make([]float32, len(x.start))
				if err := downloadAs(x.buf, dt, got); err != nil {
					t.Fatal(err)
				}
				exp := x.want[0]
				if dt == sdk.F16 {
					exp = roundF16(exp)
				}
				if r := nn.RelL2(got, exp); r > tol || math.IsNaN(r) {
					t.Fatalf("graph replay of a swap: %s rel L2 %.3g > %g against Apply", x.w.Name, r, tol)
				}
			}
			for _, x := range ws {
				got := make([]float32, len(x.start))
				if err := downloadAs(x.origBuf, dt, got); err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got, x.start) {
					t.Fatalf("%s: the device original changed over 20 swaps", x.w.Name)
				}
			}
		})
	}
}
