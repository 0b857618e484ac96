// controlnet_devctx_test.go: the denoiser with a device Conditioner (the
// shape of ELLA on a GPU pipeline), the real controlnet plugin process and
// the tiny U-Net on the GPU (stand-in CUDA libraries + CUDA C emulator, in
// a child process): the context handed over on the device
// (ResidualsGPUContext + forwardGPUContext) gives the same step as the
// host hand-off (Context downloaded, uploaded by the U-Net and the plugin),
// and the stand-in driver's counters show the context no longer goes
// device -> host in either process. The fakes at the end check the
// denoiser keeps the host path when a piece has no device path.
package host

import (
	"context"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/golden"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// deviceConditioner keeps one context per half in device memory, as
// ELLAConditioner does with ELLAOptions.GPU: Context downloads it,
// ContextGPU hands out the device tensor.
type deviceConditioner struct {
	cond, uncond *nn.GPUTensor // [1, L, D]
	onGPU        bool
	gpuCalls     int
}

func (d *deviceConditioner) half(cond bool) *nn.GPUTensor {
	if cond {
		return d.cond
	}
	return d.uncond
}

func (d *deviceConditioner) Context(_ context.Context, _ float32, cond bool) (*nn.Tensor, error) {
	return d.half(cond).Download() // [1, L, D]
}

func (d *deviceConditioner) ContextGPU(_ context.Context, _ float32, cond bool) (*nn.GPUTensor, error) {
	d.gpuCalls++
	return d.half(cond), nil
}

func (d *deviceConditioner) contextOnGPU() bool { return d.onGPU }

// hostOnlyConditioner hides ContextGPU: the hand-off before device contexts.
type hostOnlyConditioner struct{ Conditioner }

func TestCFGDeviceContextControlNet(t *testing.T) {
	fx := loadCNFixture(t)
	if testing.Short() {
		t.Skip("runs the U-Net and a ControlNet on the CUDA C emulator (seconds); not with -short")
	}
	if !cudatest.InChild() {
		out := cudatest.RunChild(t, "TestCFGDeviceContextControlNet", cudatest.Build(t))
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "per step") {
				t.Log(strings.TrimSpace(line)) // the child's counts
			}
		}
		return
	}
	dumps := cudatest.CountersDir(t) // before the plugin starts: it inherits it
	g0, err := nn.OpenGPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer g0.Close()
	g := g0.WithDType(nn.GPUF32)
	f, err := safetensors.Open(filepath.Join(golden.Dir(), "models", "sd15-tiny.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	unet, err := models.LoadUNet(models.NewWeights(f).Sub("model.diffusion_model."))
	if err != nil {
		t.Fatal(err)
	}
	uc, err := models.NewUNetCUDA(g, unet)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	model := oomUNet{deviceUNet{UNetCUDA: uc, g: g}, DTypeF32}

	_, p := newControlNetPlugin(t)
	ctx := context.Background()
	opt := fx.options(4, 1, 7)
	opt.GPU = g
	src, err := NewControlNetSource(ctx, p, opt, []ControlNetUnit{{Path: fx.file, Hint: fx.hint, Strength: 0.8, End: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dc := &deviceConditioner{onGPU: true}
	d := fx.cfg.ContextDim
	if dc.cond, err = g.Upload(pseudoRandom(5, 1, 77, d)); err != nil { // [1, 77, D]
		t.Fatal(err)
	}
	defer dc.cond.Free()
	if dc.uncond, err = g.Upload(pseudoRandom(6, 1, 77, d)); err != nil { // [1, 77, D]
		t.Fatal(err)
	}
	defer dc.uncond.Free()

	sig, _ := opt.Schedule.SamplingSigmas("normal", 4)
	x := pseudoRandom(7, 1, 4, 8, 8) // [1, 4, 8, 8]
	counts := func() (host, plugin cudatest.Counters) {
		t.Helper()
		if host, err = cudatest.ReadCounters(); err != nil {
			t.Fatal(err)
		}
		all, err := cudatest.ReadCountersDir(dumps)
		if err != nil {
			t.Fatal(err)
		}
		plugin, ok := all[p.Pid()]
		if !ok {
			t.Fatalf("no counter dump of the plugin process %d", p.Pid())
		}
		return host, plugin
	}
	// step denoises x twice (the first call warms the buffers and the
	// plugin's device net) and returns the second result and its counts.
	step := func(c Conditioner) (*nn.Tensor, cudatest.Counters, cudatest.Counters) {
		t.Helper()
		den := &CFGDenoiser{Model: model, Schedule: opt.Schedule, Scale: 7, Conditioner: c, Residuals: src}
		if _, err := den.Denoise(x, sig[0]); err != nil {
			t.Fatal(err)
		}
		h0, p0 := counts()
		out, err := den.Denoise(x, sig[0]) // [1, 4, 8, 8]
		if err != nil {
			t.Fatal(err)
		}
		h1, p1 := counts()
		return out, h1.Sub(h0), p1.Sub(p0)
	}
	want, hostOld, plugOld := step(hostOnlyConditioner{dc})
	if dc.gpuCalls != 0 {
		t.Fatalf("the host hand-off called ContextGPU %d times", dc.gpuCalls)
	}
	got, hostNew, plugNew := step(dc)
	if dc.gpuCalls == 0 {
		t.Fatal("the device hand-off never called ContextGPU")
	}
	t.Logf("host hand-off, per step: host %v; plugin %v", hostOld, plugOld)
	t.Logf("device hand-off, per step: host %v; plugin %v", hostNew, plugNew)

	maxDiff := 0.0
	for i := range want.Data {
		maxDiff = max(maxDiff, math.Abs(float64(got.Data[i]-want.Data[i])))
	}
	t.Logf("per step: max |diff| of the device hand-off from the host hand-off %.3g", maxDiff)
	if maxDiff > 1e-6 || math.IsNaN(maxDiff) {
		t.Fatalf("device context: max |diff| %.3g from the host hand-off, want <= 1e-6", maxDiff)
	}
	epsBytes := int64(2 * 4 * len(x.Data)) // [2, 4, 8, 8] f32: the only download of a step
	ctxBytes := int64(2 * 4 * 77 * d)      // [uncond, cond] contexts, f32
	if hostOld.DtoHBytes != epsBytes+ctxBytes {
		t.Errorf("host hand-off: %d bytes downloaded per step, want eps %d + context %d (stale baseline?)", hostOld.DtoHBytes, epsBytes, ctxBytes)
	}
	if hostNew.DtoHBytes != epsBytes || plugNew.DtoHBytes != 0 {
		t.Errorf("device hand-off: %d bytes downloaded by the host (want eps only, %d) and %d by the plugin (want 0)", hostNew.DtoHBytes, epsBytes, plugNew.DtoHBytes)
	}
	if hostNew.HtoDBytes+plugNew.HtoDBytes >= hostOld.HtoDBytes+plugOld.HtoDBytes {
		t.Errorf("device hand-off uploads %d + %d bytes per step, the host hand-off %d + %d: the context is still uploaded",
			hostNew.HtoDBytes, plugNew.HtoDBytes, hostOld.HtoDBytes, plugOld.HtoDBytes)
	}
}

// fakeDeviceCond claims a device context but serves only host ones; the
// cases below must never ask it for a device tensor.
type fakeDeviceCond struct {
	onGPU    bool
	gpuCalls int
}

func (f *fakeDeviceCond) Context(_ context.Context, _ float32, cond bool) (*nn.Tensor, error) {
	if cond {
		return ctxOf(1, 2), nil // [1, 2, 2]
	}
	return ctxOf(0, 2), nil // [1, 2, 2]
}

func (f *fakeDeviceCond) ContextGPU(context.Context, float32, bool) (*nn.GPUTensor, error) {
	f.gpuCalls++
	return nil, context.Canceled
}

func (f *fakeDeviceCond) contextOnGPU() bool { return f.onGPU }

// fakeContextModel is fakeEps with a device-context path.
type fakeContextModel struct{ fakeEps }

func (f *fakeContextModel) forwardGPUContext(*nn.Tensor, []float32, *nn.GPUTensor, models.GPUResiduals) (*nn.Tensor, error) {
	return nil, context.Canceled
}

func (f *fakeContextModel) gpu() *nn.GPU { return nil }

func TestCFGDeviceContextFallback(t *testing.T) {
	s := sd15(t)
	x := nn.From([]float32{0.5, 0.25}, 1, 2, 1, 1)
	for _, tc := range []struct {
		name      string
		condOnGPU bool
		ctxModel  bool
		source    ResidualSource
	}{
		{"conditioner on the host", false, true, nil},
		{"model without a device context", true, false, nil},
		{"residual source on the host", true, true, &recordResiduals{}},
		{"device residuals without a device context", true, true, &fakeGPUSource{onGPU: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cond := &fakeDeviceCond{onGPU: tc.condOnGPU}
			cm := &fakeContextModel{}
			var m EpsModel = &cm.fakeEps
			if tc.ctxModel {
				m = cm
			}
			d := &CFGDenoiser{Model: m, Schedule: s, Scale: 3, Conditioner: cond, Residuals: tc.source}
			if _, err := d.Denoise(x, 1); err != nil {
				t.Fatal(err)
			}
			if cond.gpuCalls != 0 || cm.calls != 1 {
				t.Fatalf("%d ContextGPU calls and %d host model calls; want the host hand-off (0 and 1)", cond.gpuCalls, cm.calls)
			}
		})
	}
}
