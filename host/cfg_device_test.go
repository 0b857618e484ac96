// cfg_device_test.go: the denoiser hands residuals over on the device only
// when both the source and the model can (fakes; the real pair runs in the
// golden txt2img_controlnet case on the emulated GPU), and otherwise takes
// the CPU path unchanged.
package host

import (
	"context"
	"errors"
	"testing"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
)

// fakeGPUSource is a residual source with a device path.
type fakeGPUSource struct {
	recordResiduals
	onGPU    bool
	gpuCalls int
	err      error
}

func (f *fakeGPUSource) residualsOnGPU() bool { return f.onGPU }

func (f *fakeGPUSource) ResidualsGPU(_ context.Context, x *nn.Tensor, t []float32, ctx *nn.Tensor) (models.GPUResiduals, error) {
	f.gpuCalls++
	if f.err != nil {
		return nil, f.err
	}
	return models.GPUResiduals{models.MiddleBlockResidual: &nn.GPUTensor{Shape: []int{x.Shape[0], 1, 1, 1}}}, nil
}

// fakeGPUModel is fakeEps with a device-residual path that records what it got.
type fakeGPUModel struct {
	fakeEps
	gpuRes models.GPUResiduals
}

func (f *fakeGPUModel) forwardGPUResiduals(x *nn.Tensor, ts []float32, ctx *nn.Tensor, res models.GPUResiduals) (*nn.Tensor, error) {
	f.gpuRes = res
	return f.Forward(x, ts, ctx, nil)
}

func TestCFGDeviceResiduals(t *testing.T) {
	s := sd15(t)
	x := nn.From([]float32{0.5, 0.25}, 1, 2, 1, 1)
	boom := errors.New("plugin died")
	for _, tc := range []struct {
		name     string
		onGPU    bool
		gpuModel bool
		srcErr   error
		wantGPU  bool
	}{
		{"both on the device", true, true, nil, true},
		{"source on the host", false, true, nil, false},
		{"model on the host", true, false, nil, false},
		{"device source error", true, true, boom, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &fakeGPUSource{onGPU: tc.onGPU, err: tc.srcErr}
			gm := &fakeGPUModel{}
			var m EpsModel = &gm.fakeEps
			if tc.gpuModel {
				m = gm
			}
			d := &CFGDenoiser{Model: m, Schedule: s, Scale: 3, Cond: ctxOf(1, 2), Uncond: ctxOf(0, 2), Residuals: src}
			_, err := d.Denoise(x, 1)
			if tc.srcErr != nil {
				if !errors.Is(err, tc.srcErr) {
					t.Fatalf("Denoise error %v, want the source's %v", err, tc.srcErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			gotGPU := src.gpuCalls > 0
			if gotGPU != tc.wantGPU || (src.x != nil) == tc.wantGPU {
				t.Fatalf("device calls %d, host calls made: %v; want the device path %v", src.gpuCalls, src.x != nil, tc.wantGPU)
			}
			if tc.wantGPU && gm.gpuRes[models.MiddleBlockResidual] == nil {
				t.Errorf("the model did not get the device residuals")
			}
			if !tc.wantGPU && gm.lastRes == nil {
				t.Errorf("the model did not get the host residuals")
			}
		})
	}
}
