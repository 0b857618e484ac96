// controlnet_device_test.go: ControlNetSource with device residual buffers
// (ControlNetOptions.GPU) and the real controlnet plugin process writing
// them on the GPU through a device arena (stand-in CUDA libraries with
// memfd IPC and the CUDA C emulator, in a child test process): two nets
// summed, one in guess mode (cond rows only, the uncond rows cleared on the
// device), checked against the in-process CPU net, through ResidualsGPU
// (device views) and Residuals (downloaded).
package host

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
)

func TestControlNetSourceOnDevice(t *testing.T) {
	fx := loadCNFixture(t)
	if testing.Short() {
		t.Skip("runs the ControlNet on the CUDA C emulator (seconds); not with -short")
	}
	if !cudatest.InChild() {
		cudatest.RunChild(t, "TestControlNetSourceOnDevice", cudatest.Build(t))
		return
	}
	g, err := nn.OpenGPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	_, p := newControlNetPlugin(t)
	ctx := context.Background()
	x := pseudoRandom(1, 2, 4, 8, 8) // [uncond, cond]
	cx := pseudoRandom(2, 2, 77, fx.cfg.ContextDim)
	xu, xc := nn.From(x.Data[:256], 1, 4, 8, 8), nn.From(x.Data[256:], 1, 4, 8, 8)
	cu, cc := nn.From(cx.Data[:len(cx.Data)/2], 1, 77, fx.cfg.ContextDim), nn.From(cx.Data[len(cx.Data)/2:], 1, 77, fx.cfg.ContextDim)
	opt := fx.options(4, 1, 7)
	opt.GPU = g
	sig, _ := opt.Schedule.SamplingSigmas("normal", 4)
	t0 := float32(opt.Schedule.SigmaToT(sig[0]))
	units := []ControlNetUnit{
		{Path: fx.file, Hint: fx.hint, Strength: 0.5, End: 1, Guess: true},
		{Path: filepath.Join(filepath.Dir(fx.file), "controlnet-tiny-bare.safetensors"), Hint: fx.hint, Strength: 1, End: 1},
	}
	src, err := NewControlNetSource(ctx, p, opt, units)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	one := func(int) float32 { return 1 }
	wantU := fx.reference(t, xu, []float32{t0}, cu, one)
	both := func(i int) float32 {
		s := float32(1)
		for range 12 - i {
			s *= 0.825
		}
		return 1 + 0.5*s
	}
	wantC := fx.reference(t, xc, []float32{t0}, cc, both)

	gres, err := src.ResidualsGPU(ctx, x, []float32{t0, t0}, cx)
	if err != nil {
		t.Fatal(err)
	}
	got := models.Residuals{}
	for name, r := range gres {
		if got[name], err = r.Download(); err != nil {
			t.Fatal(err)
		}
	}
	compareRows(t, fx.cfg, got, wantU, 0, 1)
	compareRows(t, fx.cfg, got, wantC, 1, 2)

	// The same step again, read back through Residuals (downloaded).
	again, err := src.Residuals(ctx, x, []float32{t0, t0}, cx)
	if err != nil {
		t.Fatal(err)
	}
	compareRows(t, fx.cfg, again, wantU, 0, 1)
	compareRows(t, fx.cfg, again, wantC, 1, 2)
	if st := src.Stats(); st.Calls != 4 {
		t.Fatalf("%d plugin calls, want 2 per step", st.Calls)
	}
}
