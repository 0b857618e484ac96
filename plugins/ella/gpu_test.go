// gpu_test.go: the connector on the GPU (gpu.go) through the sdktest
// harness with the context buffer in a device arena, against the stand-in
// CUDA libraries and their CUDA C emulator in a child process: every row
// equals the CPU connector run directly on CPU T5 features (rel L2 <= 1e-5
// in F32, 1e-2 in F16), for one step, a batch of one timestep and a batch
// of two, with the prompt encoded by T5 on the CPU or on the GPU.
package ella

import (
	"context"
	"math"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/plugins/sdk/sdktest"
	"github.com/sdbridge/sdbridge/safetensors"
)

func TestConditioningOnDevice(t *testing.T) {
	ps := tinyParams(t)
	if testing.Short() {
		t.Skip("runs the connector on the CUDA C emulator (seconds); not with -short")
	}
	if !cudatest.InChild() {
		cudatest.RunChild(t, "TestConditioningOnDevice", cudatest.Build(t))
		return
	}
	dev, err := sdk.CUDADevice(0)
	if err != nil {
		t.Fatal(err)
	}
	h := sdktest.New(t, New(nil))
	ctx := context.Background()
	cfg, _ := configOf(ps)
	m, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Two prompts: T5 on the CPU, and T5 on the GPU ("device" parameter).
	const prompt2 = "a green pyramid in fog"
	handles := map[string]string{}
	feats := map[string]*nn.Tensor{}
	for _, pc := range []struct {
		text   string
		params sdk.Params
	}{{prompt, ps}, {prompt2, tinyParams(t, sdk.Param{Name: ParamDevice, Value: "cuda:0"})}} {
		enc, err := h.Remote.EncodePrompt(ctx, &sdk.EncodePromptRequest{Text: pc.text, Params: pc.params})
		if err != nil {
			t.Fatal(err)
		}
		handles[pc.text] = enc.Handle
		if feats[pc.text], err = m.T5.Encode([][]int{m.Tokenizer.Encode(pc.text)}, nil); err != nil { // [1, N, 64]
			t.Fatal(err)
		}
	}
	buf, err := dev.Alloc(3 * (4*2*64*128 + 256)) // one context per case
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Free()
	arena := h.NewDeviceArena(buf, true)
	for _, tc := range []struct {
		name   string
		prompt string
		dtype  sdk.DType
		ts     []float32
		tol    float64
	}{
		{"F32 one step", prompt, sdk.F32, []float32{999}, 1e-5},
		{"F32 batch different t, T5 on the GPU", prompt2, sdk.F32, []float32{1, 999}, 1e-5},
		{"F16 batch same t", prompt, sdk.F16, []float32{250, 250}, 1e-2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := len(tc.ts)
			out := arena.Tensor(t, "ctx-"+tc.name, tc.dtype, b, 64, 128)
			if _, err := h.Remote.Conditioning(ctx, &sdk.ConditioningRequest{Handle: handles[tc.prompt], Timesteps: tc.ts, Out: out}); err != nil {
				t.Fatal(err)
			}
			n, _ := out.ByteLen()
			view, err := buf.Slice(int(out.Offset), int(n))
			if err != nil {
				t.Fatal(err)
			}
			got := make([]float32, b*64*128)
			if tc.dtype == sdk.F16 {
				hb := make([]uint16, len(got))
				if err := view.DownloadUint16(hb); err != nil {
					t.Fatal(err)
				}
				safetensors.F16ToF32(got, hb)
			} else if err := view.DownloadFloat32(got); err != nil {
				t.Fatal(err)
			}
			for i, ts := range tc.ts {
				want, err := m.ELLA.Forward(feats[tc.prompt], []float32{ts}) // [1, 64, 128]
				if err != nil {
					t.Fatal(err)
				}
				var num, den float64
				for j, w := range want.Data {
					d := float64(got[i*64*128+j]) - float64(w)
					num += d * d
					den += float64(w) * float64(w)
				}
				if r := math.Sqrt(num / den); r > tc.tol || math.IsNaN(r) {
					t.Errorf("row %d (t=%v): rel L2 %.3g > %g", i, ts, r, tc.tol)
				}
			}
		})
	}
}
