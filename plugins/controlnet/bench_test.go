// bench_test.go: the cost of the plugin boundary without the cost of a
// second process: the plugin served in-process over real gRPC and real
// memfd arenas (sdktest) against the same network called directly, at a
// reduced SD1.5 shape (64 model channels, context 768, latent 32x32, batch
// 2, random weights; SDBRIDGE_CN_BENCH_CHANNELS / _LATENT change it). The
// difference is the boundary: request encoding, arena binding, copying x
// and the context in, writing the 13 residuals into the shared buffers.
package controlnet

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/plugins/sdk/sdktest"
	"github.com/sdbridge/sdbridge/safetensors"
)

func benchEnv(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func benchData(seed int, n int, scale float32) []float32 {
	d := make([]float32, n)
	for i := range d {
		d[i] = scale * float32(math.Sin(float64(seed*1000+i)*12.9898))
	}
	return d
}

func BenchmarkPluginBoundary(b *testing.B) {
	layout := models.SD15()
	layout.ModelChannels = benchEnv("SDBRIDGE_CN_BENCH_CHANNELS", 64)
	lat := benchEnv("SDBRIDGE_CN_BENCH_LATENT", 32)
	file := filepath.Join(b.TempDir(), "cn.safetensors")
	if err := models.WriteRandom(file, layout.ControlNetSpecs(safetensors.F16, ""), 2, nil); err != nil {
		b.Fatal(err)
	}
	net, _, err := loadNet(file, models.SD1Heads)
	if err != nil {
		b.Fatal(err)
	}
	cfg := net.Config
	cfg.InChannels, cfg.OutChannels = 4, 4

	h := sdktest.New(b, New(nil))
	xs, cs, hs := 2*4*lat*lat, 2*77*768, 3*64*lat*lat
	in := h.NewArena(4*(xs+cs+hs)+1024, false)
	x := in.Float32(b, "x", benchData(1, xs, 0.8), 2, 4, lat, lat)
	cx := in.Float32(b, "context", benchData(2, cs, 0.8), 2, 77, 768)
	hintData := benchData(3, hs, 0.5)
	for i := range hintData {
		hintData[i] += 0.5
	}
	hint := in.Float32(b, HintInput, hintData, 1, 3, 8*lat, 8*lat)
	ts := []float32{500, 500}

	xt := nn.From(benchData(1, xs, 0.8), 2, 4, lat, lat)
	ct := nn.From(benchData(2, cs, 0.8), 2, 77, 768)
	guided, err := net.HintEncode(nn.From(hintData, 1, 3, 8*lat, 8*lat))
	if err != nil {
		b.Fatal(err)
	}
	res, err := net.ForwardEncoded(xt, guided, ts, ct)
	if err != nil {
		b.Fatal(err)
	}
	names := models.ResidualNames(cfg)
	total := 0
	for _, n := range names {
		total += len(res[n].Data)
	}
	out := h.NewArena(4*total+64*len(names), true)
	var outs []*sdk.Tensor
	for _, n := range names {
		outs = append(outs, out.Float32(b, n, make([]float32, len(res[n].Data)), res[n].Shape...))
	}
	req := &sdk.ResidualsRequest{X: x, Timesteps: ts, Context: cx, Outputs: outs, Inputs: []*sdk.Tensor{hint},
		Params: sdk.Params{{Name: ParamNet, Value: file}, {Name: ParamUNet, Value: EncodeUNetConfig(cfg)}, {Name: ParamHintKey, Value: "bench"}}}
	ctx := context.Background()
	if _, err := h.Remote.Residuals(ctx, req); err != nil { // load + encode the hint
		b.Fatal(err)
	}

	b.Run("direct", func(b *testing.B) {
		b.SetBytes(4 * int64(total))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := net.ForwardEncoded(xt, guided, ts, ct); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sdk", func(b *testing.B) {
		b.SetBytes(4 * int64(total))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := h.Remote.Residuals(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
}
