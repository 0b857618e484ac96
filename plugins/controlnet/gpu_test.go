// gpu_test.go: the plugin's GPU path (gpu.go) on the golden
// controlnet_forward case, against the stand-in CUDA libraries and their
// CUDA C emulator in a child process: residuals written into device
// arenas equal the CPU plugin's (rel L2 <= 1e-5 in F32, 1e-2 in F16) with
// scale 1 (written in place by the net), scales with accumulation, global
// pooling, and x / context read from device arenas. Two cases run by
// default (about 10 s on the emulator); SDBRIDGE_CUDA_SLOW_TESTS=1 runs all
// six; -short skips the test.
package controlnet

import (
	"context"
	"math"
	"os"
	"slices"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/plugins/sdk/sdktest"
	"github.com/sdbridge/sdbridge/safetensors"
)

// upload writes v into t's range of buf in t's dtype.
func upload(t *testing.T, buf *cuda.Buffer, ts *sdk.Tensor, v []float32) {
	t.Helper()
	n, _ := ts.ByteLen()
	view, err := buf.Slice(int(ts.Offset), int(n))
	if err != nil {
		t.Fatal(err)
	}
	if ts.DType == sdk.F16 {
		h := make([]uint16, len(v))
		for i, x := range v {
			h[i] = safetensors.F32ToF16(x)
		}
		err = view.UploadUint16(h)
	} else {
		err = view.UploadFloat32(v)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func download(t *testing.T, buf *cuda.Buffer, ts *sdk.Tensor) []float32 {
	t.Helper()
	n, _ := ts.ByteLen()
	view, err := buf.Slice(int(ts.Offset), int(n))
	if err != nil {
		t.Fatal(err)
	}
	out := make([]float32, ts.Numel())
	if ts.DType == sdk.F16 {
		h := make([]uint16, len(out))
		err = view.DownloadUint16(h)
		safetensors.F16ToF32(out, h)
	} else {
		err = view.DownloadFloat32(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPluginGPUMatchesCPU(t *testing.T) {
	cfg := tinyUNetConfig(t)
	if testing.Short() {
		t.Skip("runs the ControlNet on the CUDA C emulator (seconds); not with -short")
	}
	if !cudatest.InChild() {
		cudatest.RunChild(t, "TestPluginGPUMatchesCPU", cudatest.Build(t))
		return
	}
	dev, err := sdk.CUDADevice(0)
	if err != nil {
		t.Fatal(err)
	}
	h := sdktest.New(t, New(nil))
	fc := loadForwardCase(t, h)
	file := caseFile(t, fc)
	ctx := context.Background()
	scales := make([]float32, 13)
	for i := range scales {
		scales[i] = 0.25 + 0.1*float32(i)
	}
	tests := []struct {
		name      string
		dtype     sdk.DType
		devInputs bool
		prefill   float32
		params    []sdk.Param
		tol       float64
		slow      bool
	}{
		{"F32 scale 1 in place, x and context on the device", sdk.F32, true, 0, nil, 1e-5, false},
		{"F16 scales accumulated, global pool", sdk.F16, false, 0.5, []sdk.Param{{Name: ParamScales, Value: EncodeScales(scales)}, {Name: ParamAccumulate, Value: "true"}, {Name: ParamGlobalPool, Value: "true"}}, 1e-2, false},
		{"F32 scale 1 in place", sdk.F32, false, 0, nil, 1e-5, true},
		{"F32 scales accumulated", sdk.F32, false, 0.75, []sdk.Param{{Name: ParamScales, Value: EncodeScales(scales)}, {Name: ParamAccumulate, Value: "true"}}, 1e-5, true},
		{"F32 global pool", sdk.F32, false, 0, []sdk.Param{{Name: ParamGlobalPool, Value: "true"}, {Name: ParamScales, Value: EncodeScales(scales)}}, 1e-5, true},
		{"F16 x and context on the device, accumulated", sdk.F16, true, 0.5, []sdk.Param{{Name: ParamAccumulate, Value: "true"}}, 1e-2, true},
	}
	slow := os.Getenv("SDBRIDGE_CUDA_SLOW_TESTS") == "1"
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.slow && !slow {
				t.Skip("about 5 s on the emulator; set SDBRIDGE_CUDA_SLOW_TESTS=1")
			}
			// CPU reference: host outputs prefilled alike.
			for _, o := range fc.outs {
				d, _ := o.Float32()
				for i := range d {
					d[i] = tc.prefill
				}
			}
			if _, err := h.Remote.Residuals(ctx, fc.request(cfg, file, tc.params...)); err != nil {
				t.Fatal(err)
			}
			want := map[string][]float32{}
			for _, o := range fc.outs {
				d, _ := o.Float32()
				want[o.Name] = slices.Clone(d)
			}
			total := 0
			for _, o := range fc.outs {
				total += o.Numel()*4 + 256
			}
			outBuf, err := dev.Alloc(total)
			if err != nil {
				t.Fatal(err)
			}
			defer outBuf.Free()
			outArena := h.NewDeviceArena(outBuf, true)
			defer h.Remote.UnmapArena(ctx, outArena.ID)
			var outs []*sdk.Tensor
			for _, o := range fc.outs {
				d := outArena.Tensor(t, o.Name, tc.dtype, o.Shape...)
				upload(t, outBuf, d, slices.Repeat([]float32{tc.prefill}, o.Numel()))
				outs = append(outs, d)
			}
			req := fc.request(cfg, file, tc.params...)
			req.Outputs = outs
			if tc.devInputs {
				inBuf, err := dev.Alloc(4*(fc.x.Numel()+fc.cx.Numel()) + 512)
				if err != nil {
					t.Fatal(err)
				}
				defer inBuf.Free()
				inArena := h.NewDeviceArena(inBuf, false)
				defer h.Remote.UnmapArena(ctx, inArena.ID)
				for _, src := range []*sdk.Tensor{fc.x, fc.cx} {
					d := inArena.Tensor(t, src.Name, tc.dtype, src.Shape...)
					v, _ := src.Float32()
					upload(t, inBuf, d, v)
					if src == fc.x {
						req.X = d
					} else {
						req.Context = d
					}
				}
			}
			if _, err := h.Remote.Residuals(ctx, req); err != nil {
				t.Fatal(err)
			}
			for _, o := range outs {
				got := download(t, outBuf, o)
				if r := nn.RelL2(got, want[o.Name]); r > tc.tol || math.IsNaN(r) {
					t.Fatalf("%s: GPU vs CPU rel L2 %.3g > %g", o.Name, r, tc.tol)
				}
			}
		})
	}
}
