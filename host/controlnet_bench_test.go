// controlnet_bench_test.go: what one ControlNet adds to a CFG step, at a
// reduced SD1.5 shape (the real block structure and context width 768 with
// 64 model channels, latent 32x32, batch 2; random weights), and what the
// plugin boundary costs on top of the ControlNet's own compute:
//
//	unet                 U-Net CFG step alone
//	controlnet/inproc    the ControlNet's forward in this process (hint cached)
//	controlnet/plugin    the same through the plugin process: round trip,
//	                     input copies into arenas, residuals written in place
//	roundtrip            a Residuals call doing no compute (op=load)
//	handoff              the memory traffic of a call: x and context copied
//	                     into the input arena, 13 residuals copied into the
//	                     shared buffers (what the plugin's writes cost)
//	unet+controlnet      a whole controlled step (plugin + U-Net)
//
// SDBRIDGE_CN_BENCH_CHANNELS and SDBRIDGE_CN_BENCH_LATENT change the shape
// (320 and 64 are SD1.5 at 512 px).
//
// Overhead = controlnet/plugin - controlnet/inproc, as a fraction of
// controlnet/inproc. It does not check numbers (TestControlNetSource does).
package host

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/plugins/controlnet"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func BenchmarkControlNetStep(b *testing.B) {
	layout := models.SD15()
	layout.ModelChannels = envInt("SDBRIDGE_CN_BENCH_CHANNELS", 64) // 320 for real SD1.5
	lat := envInt("SDBRIDGE_CN_BENCH_LATENT", 32)                   // 64 for 512 px
	src := models.NewRandomSource(layout.Specs(safetensors.F32), 1)
	unet, err := models.LoadUNet(models.NewWeights(src).Sub("model.diffusion_model."))
	if err != nil {
		b.Fatal(err)
	}
	file := filepath.Join(b.TempDir(), "controlnet-bench.safetensors")
	if err := models.WriteRandom(file, layout.ControlNetSpecs(safetensors.F16, "control_model."), 2, nil); err != nil {
		b.Fatal(err)
	}
	cf, err := safetensors.Open(file)
	if err != nil {
		b.Fatal(err)
	}
	net, _, err := models.LoadControlNet(cf)
	cf.Close()
	if err != nil {
		b.Fatal(err)
	}

	x := pseudoRandom(1, 2, 4, lat, lat) // [2, 4, h, w]: uncond, cond
	cx := pseudoRandom(2, 2, 77, 768)    // [2, 77, 768]
	hint := pseudoRandom(3, 1, 3, 8*lat, 8*lat)
	for i := range hint.Data {
		hint.Data[i] = 0.5 + hint.Data[i]/2
	}
	sched, err := NewDiscreteSchedule(models.SD15AlphasCumprod())
	if err != nil {
		b.Fatal(err)
	}
	sig, _ := sched.SamplingSigmas("normal", 20)
	t0 := float32(sched.SigmaToT(sig[0]))
	ts := []float32{t0, t0}
	ctx := context.Background()

	_, p := newControlNetPlugin(b)
	source, err := NewControlNetSource(ctx, p, ControlNetOptions{UNet: unet.Config, Schedule: sched, ScheduleName: "normal",
		Steps: 20, Batch: 1, CFG: 7, Width: 8 * lat, Height: 8 * lat}, []ControlNetUnit{{Path: file, Hint: hint, Strength: 1, End: 1}})
	if err != nil {
		b.Fatal(err)
	}
	defer source.Close()
	if _, err := source.Residuals(ctx, x, ts, cx); err != nil { // warm: hint encoded and cached
		b.Fatal(err)
	}
	guided, err := net.HintEncode(hint)
	if err != nil {
		b.Fatal(err)
	}
	resBytes := int64(0)
	for _, s := range residualShapes(unet.Config, 2, lat, lat) {
		resBytes += 4 * int64(shapeNumel(s))
	}

	b.Run("unet", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := unet.Forward(x, ts, cx, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("controlnet/inproc", func(b *testing.B) {
		b.SetBytes(resBytes)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := net.ForwardEncoded(x, guided, ts, cx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("controlnet/plugin", func(b *testing.B) {
		b.SetBytes(resBytes)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := source.Residuals(ctx, x, ts, cx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("roundtrip", func(b *testing.B) {
		req := &sdk.ResidualsRequest{Params: sdk.Params{{Name: controlnet.ParamNet, Value: file},
			{Name: controlnet.ParamUNet, Value: controlnet.EncodeUNetConfig(unet.Config)}, {Name: controlnet.ParamOp, Value: controlnet.OpLoad}}}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := p.Residuals(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("handoff", func(b *testing.B) {
		res, err := net.ForwardEncoded(x, guided, ts, cx)
		if err != nil {
			b.Fatal(err)
		}
		names := models.ResidualNames(unet.Config)
		b.SetBytes(resBytes)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := source.putInputs(x, cx); err != nil {
				b.Fatal(err)
			}
			if _, err := source.bufs.rowRefs(0, 2); err != nil {
				b.Fatal(err)
			}
			for i, name := range names {
				copy(source.bufs.data[i], res[name].Data)
			}
		}
	})
	b.Run("unet+controlnet", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			res, err := source.Residuals(ctx, x, ts, cx)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := unet.Forward(x, ts, cx, res); err != nil {
				b.Fatal(err)
			}
		}
	})
}
