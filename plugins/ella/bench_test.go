// bench_test.go times the connector per sampler step at the release's
// shapes (W 768, 6 blocks, Din 2048, 128 T5 tokens) with random weights
// bound strictly from ReleaseSpecs: directly, and through the plugin
// (sdktest: gRPC round trip + write into a shared arena), and checks that
// ReleaseSpecs is the released layout (93 tensors, 66.82 M parameters).
package ella

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/plugins/sdk/sdktest"
)

// stepFLOP is the connector's work per step at N text tokens, excluding
// proj_in (once per prompt): per block the q/out projections of Q rows,
// k/v projections of Q+N rows, the attention products and the 4W MLP.
func stepFLOP(n int) float64 {
	const w, q = ReleaseWidth, ReleaseLatents
	perBlock := 2*q*w*w + 2*(q+n)*w*w + 2*q*(q+n)*w + 2*q*w*4*w
	return 2 * float64(ReleaseLayers*perBlock)
}

func releaseConnector(tb testing.TB) *models.ELLA {
	tb.Helper()
	e, err := models.LoadELLA(models.NewWeights(models.NewRandomSource(ReleaseSpecs(), 7)), 0)
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

func randomText(tb testing.TB, e *models.ELLA, n int) *models.ELLAText {
	tb.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	x := nn.New(1, n, e.InputDim) // [1, N, Din]
	for i := range x.Data {
		x.Data[i] = float32(rng.NormFloat64())
	}
	text, err := e.Prepare(x)
	if err != nil {
		tb.Fatal(err)
	}
	return text
}

func TestReleaseSpecs(t *testing.T) {
	specs := ReleaseSpecs()
	params := 0
	for _, s := range specs {
		n := 1
		for _, d := range s.Shape {
			n *= d
		}
		params += n
	}
	if len(specs) != 93 || params != 66820608 {
		t.Errorf("%d tensors, %d parameters; the release has 93 and 66,820,608", len(specs), params)
	}
	e := releaseConnector(t)
	if e.Width != 768 || e.InputDim != 2048 || e.NumLatents != 64 || len(e.Blocks) != 6 || e.TimeEmbedDim != 768 || e.TimeChannels != 320 {
		t.Errorf("bound connector W %d Din %d Q %d L %d E %d Ct %d", e.Width, e.InputDim, e.NumLatents, len(e.Blocks), e.TimeEmbedDim, e.TimeChannels)
	}
}

// BenchmarkConnectorStep is one Conditioning call (one prompt, one t) at
// the release's shapes and 128 tokens: the per-step cost of one CFG half.
func BenchmarkConnectorStep(b *testing.B) {
	e := releaseConnector(b)
	text := randomText(b, e, 128)
	b.SetBytes(4 * ReleaseLatents * ReleaseWidth)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.Conditioning(text, []float32{500.5}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(stepFLOP(128)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkPluginStep is the same step through the plugin: gRPC round trip
// from the host, connector, write into the host's arena buffer.
func BenchmarkPluginStep(b *testing.B) {
	e := releaseConnector(b)
	p := New(nil)
	p.handles["bench"] = &handle{m: &Models{ELLA: e}, enc: &encoded{text: randomText(b, e, 128), tokens: 128}}
	h := sdktest.New(b, p)
	out := h.NewArena(1<<20, true).Float32(b, "ctx", make([]float32, ReleaseLatents*ReleaseWidth), 1, ReleaseLatents, ReleaseWidth)
	ctx := context.Background()
	b.SetBytes(4 * ReleaseLatents * ReleaseWidth)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := h.Remote.Conditioning(ctx, &sdk.ConditioningRequest{Handle: "bench", Timesteps: []float32{500.5}, Out: out}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(stepFLOP(128)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}
