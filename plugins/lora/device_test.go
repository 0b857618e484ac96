// device_test.go checks the GPU merge (device.go) against the CPU merge on
// the same adapters, on the stand-in CUDA libraries (cuda/cudatest) with
// the CUDA C of lora.cu run by their emulator: every GPU op kind and every
// fallback, in F32 (rel L2 <= 1e-6 against Apply) and F16 storage (<= 1e-3
// against Apply rounded to F16), plus one PlanPatch + PatchWeights round
// trip over gRPC with the weight in a device arena.
package lora

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/plugins/sdk/sdktest"
	"github.com/sdbridge/sdbridge/safetensors"
)

// deviceCase is one adapter on the maths fixture and the key it patches.
type deviceCase struct {
	name  string
	key   string
	build func(fx *mathsFixture, a *memSource)
	gpu   bool // every op takes the GPU path (else the CPU fallback)
}

func deviceCases() []deviceCase {
	conv := UNetPrefix + kConv + ".weight"
	return []deviceCase{
		{"LoRA linear (GemmEx beta 1)", UNetPrefix + kLinear + ".weight", func(fx *mathsFixture, a *memSource) {
			mod := "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"
			a.put(mod+".lora_down.weight", randn(fx.r, 3*12, 1), 3, 12).put(mod+".lora_up.weight", randn(fx.r, 6*3, 1), 6, 3).put(mod+".alpha", []float32{2}, 1)
		}, true},
		{"LoCon 3x3", conv, func(fx *mathsFixture, a *memSource) {
			mod := "lora_unet_down_blocks_0_resnets_0_conv1"
			a.put(mod+".lora_down.weight", randn(fx.r, 4*6*9, 1), 4, 6, 3, 3).put(mod+".lora_up.weight", randn(fx.r, 8*4, 1), 8, 4, 1, 1).put(mod+".alpha", []float32{2}, 1)
		}, true},
		{"LoHa linear", UNetPrefix + kLinear + ".weight", func(fx *mathsFixture, a *memSource) {
			mod := "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"
			a.put(mod+".hada_w1_a", randn(fx.r, 6*2, 1), 6, 2).put(mod+".hada_w1_b", randn(fx.r, 2*12, 1), 2, 12).
				put(mod+".hada_w2_a", randn(fx.r, 6*2, 1), 6, 2).put(mod+".hada_w2_b", randn(fx.r, 2*12, 1), 2, 12).put(mod+".alpha", []float32{1}, 1)
		}, true},
		{"LoKr decomposed w1, full 4-D w2, conv", conv, func(fx *mathsFixture, a *memSource) {
			mod := "lora_unet_down_blocks_0_resnets_0_conv1"
			a.put(mod+".lokr_w1_a", randn(fx.r, 2, 1), 2, 1).put(mod+".lokr_w1_b", randn(fx.r, 3, 1), 1, 3).
				put(mod+".lokr_w2", randn(fx.r, 4*2*9, 1), 4, 2, 3, 3).put(mod+".alpha", []float32{0.5}, 1)
		}, true},
		{"LoKr Tucker conv", conv, func(fx *mathsFixture, a *memSource) {
			mod := "lora_unet_down_blocks_0_resnets_0_conv1"
			a.put(mod+".lokr_w1", randn(fx.r, 4, 1), 2, 2).put(mod+".lokr_t2", randn(fx.r, 2*2*9, 1), 2, 2, 3, 3).
				put(mod+".lokr_w2_a", randn(fx.r, 2*4, 1), 2, 4).put(mod+".lokr_w2_b", randn(fx.r, 2*3, 1), 2, 3).put(mod+".alpha", []float32{1}, 1)
		}, true},
		{"full diff", UNetPrefix + kOut + ".weight", func(fx *mathsFixture, a *memSource) {
			mod := "diffusion_model.output_blocks.3.1.transformer_blocks.0.attn1.to_out.0"
			a.put(mod+".diff", randn(fx.r, 36, 1), 6, 6).put(mod+".diff_b", randn(fx.r, 6, 1), 6)
		}, true},
		{"full diff_b on the bias", UNetPrefix + kOut + ".bias", func(fx *mathsFixture, a *memSource) {
			mod := "diffusion_model.output_blocks.3.1.transformer_blocks.0.attn1.to_out.0"
			a.put(mod+".diff", randn(fx.r, 36, 1), 6, 6).put(mod+".diff_b", randn(fx.r, 6, 1), 6)
		}, true},
		{"LoHa CP conv (fallback)", conv, func(fx *mathsFixture, a *memSource) {
			mod := "lora_unet_down_blocks_0_resnets_0_conv1"
			a.put(mod+".hada_t1", randn(fx.r, 81, 1), 3, 3, 3, 3).put(mod+".hada_t2", randn(fx.r, 81, 1), 3, 3, 3, 3).
				put(mod+".hada_w1_a", randn(fx.r, 24, 1), 3, 8).put(mod+".hada_w1_b", randn(fx.r, 18, 1), 3, 6).
				put(mod+".hada_w2_a", randn(fx.r, 24, 1), 3, 8).put(mod+".hada_w2_b", randn(fx.r, 18, 1), 3, 6).put(mod+".alpha", []float32{3}, 1)
		}, false},
		{"DoRA conv (fallback)", conv, func(fx *mathsFixture, a *memSource) {
			mod := "lora_unet_down_blocks_0_resnets_0_conv1"
			mag := randn(fx.r, 8, 1)
			for i := range mag {
				mag[i] = float32(math.Abs(float64(mag[i])) + 1)
			}
			a.put(mod+".lora_down.weight", randn(fx.r, 4*6*9, 1), 4, 6, 3, 3).put(mod+".lora_up.weight", randn(fx.r, 8*4, 1), 8, 4, 1, 1).
				put(mod+".alpha", []float32{2}, 1).put(mod+".dora_scale", mag, 8, 1, 1, 1)
		}, false},
		{"IA3 rows (fallback)", conv, func(fx *mathsFixture, a *memSource) {
			mod := "lora_unet_down_blocks_0_resnets_0_conv1"
			a.put(mod+".weight", randn(fx.r, 8, 1), 8).put(mod+".on_input", []float32{0}, 1)
		}, false},
	}
}

// emulatorRuns reports whether the stand-in driver runs lora.cu (the CUDA
// C emulator of cuda/cudatest), by launching lora_axpy_f32 on 4 values.
func emulatorRuns(t *testing.T, dev *cuda.Device) bool {
	b, err := dev.Alloc(32)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free()
	d, _ := b.Slice(16, 16)
	if err := b.UploadFloat32([]float32{1, 2, 3, 4, 1, 1, 1, 1}); err != nil {
		t.Fatal(err)
	}
	if err := launch(dev, "lora_axpy", sdk.F32, 4, b, d, float32(0.5), int64(4)); err != nil {
		t.Logf("lora.cu does not run on this stand-in: %v", err)
		return false
	}
	got := make([]float32, 4)
	if err := b.DownloadFloat32(got); err != nil {
		t.Logf("lora.cu does not run on this stand-in: %v", err)
		return false
	}
	if got[0] != 1.5 || got[3] != 4.5 {
		t.Fatalf("lora_axpy_f32 on the emulator: %v, want [1.5 2.5 3.5 4.5]", got)
	}
	return true
}

// gemmF16Runs reports whether the stand-in cuBLAS runs an F16 GemmEx.
func gemmF16Runs(t *testing.T, p *Plugin, dev *cuda.Device) bool {
	bl, err := p.deviceBLAS(dev)
	if err != nil {
		t.Fatal(err)
	}
	b, err := dev.Alloc(64)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free()
	one := safetensors.F32ToF16(1)
	if err := b.UploadUint16([]uint16{one, one, one, one}); err != nil {
		t.Fatal(err)
	}
	if err := bl.GemmEx(false, false, 1, 1, 1, 1, b, 1, b, 1, 1, b, 1, cuda.R16F, cuda.R16F); err != nil {
		t.Logf("F16 GemmEx does not run on this stand-in: %v", err)
		return false
	}
	got := make([]uint16, 1)
	if err := b.DownloadUint16(got); err != nil {
		t.Fatal(err)
	}
	if got[0] != safetensors.F32ToF16(2) {
		t.Fatalf("F16 GemmEx 1*1 + 1 = %#x, want 2", got[0])
	}
	return true
}

func TestDeviceMergeMatchesCPU(t *testing.T) {
	if !cudatest.InChild() {
		cudatest.RunChild(t, "TestDeviceMergeMatchesCPU", cudatest.Build(t))
		return
	}
	dev, err := sdk.CUDADevice(0)
	if err != nil {
		t.Fatal(err)
	}
	kernels := emulatorRuns(t, dev)
	p := NewPlugin()
	f16Gemm := gemmF16Runs(t, p, dev)
	for _, dt := range []sdk.DType{sdk.F32, sdk.F16} {
		for _, tc := range deviceCases() {
			t.Run(string(dt)+"/"+tc.name, func(t *testing.T) {
				plain := strings.HasPrefix(tc.name, "LoRA") || strings.HasPrefix(tc.name, "LoCon")
				if tc.gpu && !plain && !kernels {
					t.Skip("needs the CUDA C emulator of cuda/cudatest (plan §A) to run lora.cu")
				}
				if tc.gpu && plain && dt == sdk.F16 && !f16Gemm {
					t.Skip("needs F16 GemmEx in the stand-in cuBLAS of cuda/cudatest (plan §A)")
				}
				fx := newFixture()
				a := newMem()
				tc.build(fx, a)
				f := parse(t, a, nil)
				plan, err := NewPlan(fx.ckpt, []Adapter{{File: f, UNet: 0.7}, {File: f, UNet: -0.3}})
				if err != nil {
					t.Fatal(err)
				}
				orig := fx.orig[tc.key]
				tg, ok := plan.Target(tc.key)
				if !ok {
					t.Fatalf("plan does not touch %s", tc.key)
				}
				gpu := true
				for i := range tg.Ops {
					gpu = gpu && tg.Ops[i].onDevice()
				}
				if gpu != tc.gpu {
					t.Fatalf("GPU path %v, want %v", gpu, tc.gpu)
				}
				start := orig
				if dt == sdk.F16 {
					start = roundF16(orig)
				}
				want := make([]float32, len(orig))
				if err := plan.Apply(tc.key, start, want); err != nil {
					t.Fatal(err)
				}
				buf, err := dev.Alloc(4 * len(orig))
				if err != nil {
					t.Fatal(err)
				}
				defer buf.Free()
				if err := uploadAs(buf, dt, start); err != nil {
					t.Fatal(err)
				}
				ref := sdk.TensorRef{Name: tc.key, DType: dt, Shape: tg.Shape, Writable: true}
				w, err := sdk.BindDeviceTensor(ref, buf)
				if err != nil {
					t.Fatal(err)
				}
				if err := p.patchDevice(plan, w, nil); err != nil {
					t.Fatal(err)
				}
				got := make([]float32, len(orig))
				if err := downloadAs(buf, dt, got); err != nil {
					t.Fatal(err)
				}
				tol := 1e-6
				if dt == sdk.F16 {
					want, tol = roundF16(want), 1e-3
				}
				if rel := nn.RelL2(got, want); rel > tol || math.IsNaN(rel) {
					t.Fatalf("rel L2 %.3g > %g (GPU path %v)", rel, tol, gpu)
				}
			})
		}
	}
}

// roundF16 rounds each value to the nearest F16.
func roundF16(x []float32) []float32 {
	out := make([]float32, len(x))
	safetensors.F16ToF32(out, toF16(x))
	return out
}

// TestDevicePatchOverGRPC runs PlanPatch and PatchWeights over gRPC with
// the weight in a device arena at a non-zero offset.
func TestDevicePatchOverGRPC(t *testing.T) {
	if !cudatest.InChild() {
		cudatest.RunChild(t, "TestDevicePatchOverGRPC", cudatest.Build(t))
		return
	}
	dev, err := sdk.CUDADevice(0)
	if err != nil {
		t.Fatal(err)
	}
	fx := newFixture()
	a := newMem()
	deviceCases()[0].build(fx, a)
	path := t.TempDir() + "/lora.safetensors"
	writeFile(t, path, a, nil)
	key := UNetPrefix + kLinear + ".weight"
	p := NewPlugin()
	h := sdktest.New(t, p)
	ctx := context.Background()
	d, err := h.Remote.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(func() []string {
		var s []string
		for _, c := range d.Capabilities {
			s = append(s, string(c))
		}
		return s
	}(), ","), string(sdk.CapDeviceArenas)) {
		t.Fatalf("capabilities %v lack %s", d.Capabilities, sdk.CapDeviceArenas)
	}
	var model []sdk.TensorInfo
	for _, n := range fx.ckpt.Names() {
		i, _ := fx.ckpt.Lookup(n)
		model = append(model, sdk.TensorInfo{Name: n, DType: sdk.F32, Shape: i.Shape})
	}
	params := sdk.Params{{Name: "lora", Value: path}, {Name: "unet", Value: "0.8"}}
	plan, err := h.Remote.PlanPatch(ctx, &sdk.PlanPatchRequest{Model: model, Params: params})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Touched) != 1 || plan.Touched[0] != key {
		t.Fatalf("touched %v, want [%s]", plan.Touched, key)
	}
	buf, err := dev.Alloc(4096)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Free()
	arena := h.NewDeviceArena(buf, true)
	arena.Tensor(t, "pad", sdk.F32, 10)
	w := arena.Tensor(t, key, sdk.F32, 6, 12)
	view, _ := buf.Slice(int(w.Offset), 4*72)
	if err := view.UploadFloat32(fx.orig[key]); err != nil {
		t.Fatal(err)
	}
	resp, err := h.Remote.PatchWeights(ctx, &sdk.PatchWeightsRequest{Tensors: []*sdk.Tensor{w}, Params: params})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Written) != 1 || resp.Written[0].Offset != w.Offset {
		t.Fatalf("written %v", resp.Written)
	}
	got := make([]float32, 72)
	if err := view.DownloadFloat32(got); err != nil {
		t.Fatal(err)
	}
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cpu, err := NewPlan(fx.ckpt, []Adapter{{File: f, UNet: 0.8, TE: 0.8}})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]float32, 72)
	if err := cpu.Apply(key, fx.orig[key], want); err != nil {
		t.Fatal(err)
	}
	if rel := nn.RelL2(got, want); rel > 1e-6 {
		t.Fatalf("rel L2 %.3g between the patch over gRPC and Apply", rel)
	}
}
