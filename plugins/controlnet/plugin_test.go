// plugin_test.go: the plugin behind the real gRPC shim and real sealed
// memfd arenas (sdktest): the golden controlnet_forward case computed by the
// plugin into host buffers, scales and accumulation, the hint cache, and the
// refusals (wrong hint size, another architecture, missing parameters).
package controlnet

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/golden"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/plugins/sdk/sdktest"
	"github.com/sdbridge/sdbridge/safetensors"
)

// tinyUNetConfig reads the golden tiny checkpoint's U-Net configuration.
func tinyUNetConfig(t testing.TB) models.UNetConfig {
	t.Helper()
	f, err := safetensors.Open(filepath.Join(golden.Dir(), "models", "sd15-tiny.safetensors"))
	if err != nil {
		t.Skipf("golden models not available: %v", err)
	}
	defer f.Close()
	cfg, err := models.InferUNetConfig(models.NewWeights(f).Sub("model.diffusion_model."))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// forwardCase holds the controlnet_forward case bound into harness arenas.
type forwardCase struct {
	c       *golden.Case
	x, cx   *sdk.Tensor
	hint    *sdk.Tensor
	ts      []float32
	outs    []*sdk.Tensor
	in, out *sdktest.Arena
}

func loadForwardCase(t *testing.T, h *sdktest.Harness) *forwardCase {
	t.Helper()
	c, err := golden.Load(golden.Dir(), "controlnet_forward")
	if err != nil {
		t.Skipf("golden case not available: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	fc := &forwardCase{c: c, in: h.NewArena(8<<20, false), out: h.NewArena(8<<20, true)}
	get := func(name string) ([]float32, []int) {
		d, s, err := c.Input(name)
		if err != nil {
			t.Fatal(err)
		}
		return d, s
	}
	d, s := get("in.x")
	fc.x = fc.in.Float32(t, "x", d, s...)
	d, s = get("in.context")
	fc.cx = fc.in.Float32(t, "context", d, s...)
	d, s = get("in.hint")
	fc.hint = fc.in.Float32(t, HintInput, d, s...)
	fc.ts, _ = get("in.timesteps")
	for _, name := range c.Outputs() {
		_, s := get(name)
		fc.outs = append(fc.outs, fc.out.Float32(t, strings.TrimPrefix(name, "out.residual."), make([]float32, sdk.Numel(s)), s...))
	}
	return fc
}

func (fc *forwardCase) request(cfg models.UNetConfig, file string, extra ...sdk.Param) *sdk.ResidualsRequest {
	params := sdk.Params{
		{Name: ParamNet, Value: file},
		{Name: ParamUNet, Value: EncodeUNetConfig(cfg)},
		{Name: ParamHintKey, Value: "case-hint"},
	}
	return &sdk.ResidualsRequest{X: fc.x, Timesteps: fc.ts, Context: fc.cx, Outputs: fc.outs,
		Inputs: []*sdk.Tensor{fc.hint}, Params: append(params, extra...)}
}

func (fc *forwardCase) result(t *testing.T, scale float32) golden.Result {
	t.Helper()
	got := golden.Result{}
	for _, o := range fc.outs {
		d, err := o.Float32()
		if err != nil {
			t.Fatal(err)
		}
		d = slices.Clone(d)
		for i := range d {
			d[i] *= scale
		}
		got["out.residual."+o.Name] = golden.Array{Shape: o.Shape, Data: d}
	}
	return got
}

func caseFile(t *testing.T, fc *forwardCase) string {
	p, err := fc.c.File("controlnet")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPluginGoldenForward(t *testing.T) {
	cfg := tinyUNetConfig(t)
	h := sdktest.New(t, New(nil))
	fc := loadForwardCase(t, h)
	ctx := context.Background()
	bare := filepath.Join(golden.Dir(), "models", "controlnet-tiny-bare.safetensors")
	for _, file := range []string{caseFile(t, fc), bare} {
		t.Run(filepath.Base(file), func(t *testing.T) {
			resp, err := h.Remote.Residuals(ctx, fc.request(cfg, file))
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Written) != 13 {
				t.Fatalf("wrote %d residuals, want 13", len(resp.Written))
			}
			rel, err := fc.c.Compare(fc.result(t, 1))
			if err != nil {
				t.Fatalf("rel_l2 %.3g: %v", rel, err)
			}
			t.Logf("rel_l2 %.3g", rel)
		})
	}
}

func TestPluginScalesAccumulateAndCache(t *testing.T) {
	cfg := tinyUNetConfig(t)
	h := sdktest.New(t, New(nil))
	fc := loadForwardCase(t, h)
	ctx := context.Background()
	file := caseFile(t, fc)
	half := make([]float32, 13)
	for i := range half {
		half[i] = 0.5
	}
	scales := sdk.Param{Name: ParamScales, Value: EncodeScales(half)}
	if _, err := h.Remote.Residuals(ctx, fc.request(cfg, file, scales)); err != nil {
		t.Fatal(err)
	}
	// Scribble over the hint: the cached encoding under the same key must
	// be used, so the result cannot change.
	hd, _ := fc.hint.Float32()
	saved := slices.Clone(hd)
	for i := range hd {
		hd[i] = 0.5
	}
	defer copy(hd, saved)
	acc := sdk.Param{Name: ParamAccumulate, Value: "true"}
	if _, err := h.Remote.Residuals(ctx, fc.request(cfg, file, scales, acc)); err != nil {
		t.Fatal(err)
	}
	if rel, err := fc.c.Compare(fc.result(t, 1)); err != nil {
		t.Fatalf("0.5 + 0.5 accumulated: rel_l2 %.3g: %v", rel, err)
	}
	// Twice the scale: the result doubles.
	two := slices.Repeat([]float32{2}, 13)
	if _, err := h.Remote.Residuals(ctx, fc.request(cfg, file, sdk.Param{Name: ParamScales, Value: EncodeScales(two)})); err != nil {
		t.Fatal(err)
	}
	if rel, err := fc.c.Compare(fc.result(t, 0.5)); err != nil {
		t.Fatalf("scale 2: rel_l2 %.3g: %v", rel, err)
	}
}

func TestPluginRefusals(t *testing.T) {
	cfg := tinyUNetConfig(t)
	h := sdktest.New(t, New(nil))
	fc := loadForwardCase(t, h)
	file := caseFile(t, fc)

	sd15 := cfg
	sd15.ContextDim = 768
	wider := cfg
	wider.ModelChannels = 64

	sdxl := filepath.Join(t.TempDir(), "sdxl-controlnet.safetensors")
	specs := models.Tiny(1000).ControlNetSpecs(safetensors.F16, "control_model.")
	specs = append(specs, safetensors.Spec{Name: "control_model.label_emb.0.0.weight", DType: safetensors.F16, Shape: []int{128, 256}})
	if err := models.WriteRandom(sdxl, specs, 1, nil); err != nil {
		t.Fatal(err)
	}
	small := h.NewArena(1<<20, false)
	hd, _ := fc.hint.Float32()
	wrongHint := small.Float32(t, HintInput, hd[:3*32*32], 1, 3, 32, 32)

	tests := []struct {
		name string
		req  *sdk.ResidualsRequest
		want string
	}{
		{"context width", fc.request(sd15, file), "not an SD 1.x network"},
		{"channels", fc.request(wider, file), "channels"},
		{"sdxl file", fc.request(cfg, sdxl), "SDXL"},
		{"missing file", fc.request(cfg, filepath.Join(t.TempDir(), "nope.safetensors")), "no such file"},
		{"pickle", fc.request(cfg, "control_v11p_sd15_canny.pth"), "pickle"},
		{"no net", fc.request(cfg, ""), "required"},
		{"wrong hint size", func() *sdk.ResidualsRequest {
			r := fc.request(cfg, file, sdk.Param{Name: ParamHintKey, Value: "other"})
			r.Inputs = []*sdk.Tensor{wrongHint}
			return r
		}(), "exactly 8x the latent"},
		{"no hint", func() *sdk.ResidualsRequest {
			r := fc.request(cfg, file)
			r.Inputs = nil
			return r
		}(), "control image"},
		{"bad scales", fc.request(cfg, file, sdk.Param{Name: ParamScales, Value: "1,2"}), "want 13"},
		{"bad op", fc.request(cfg, file, sdk.Param{Name: ParamOp, Value: "explode"}), "unknown op"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.Remote.Residuals(context.Background(), tt.req)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
			t.Log(err)
		})
	}
}

func TestPluginLoadOp(t *testing.T) {
	cfg := tinyUNetConfig(t)
	h := sdktest.New(t, New(nil))
	file := filepath.Join(golden.Dir(), "models", "controlnet-tiny.safetensors")
	resp, err := h.Remote.Residuals(context.Background(), &sdk.ResidualsRequest{Params: sdk.Params{
		{Name: ParamNet, Value: file}, {Name: ParamUNet, Value: EncodeUNetConfig(cfg)}, {Name: ParamOp, Value: OpLoad}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Written) != 0 {
		t.Fatalf("load op wrote %d tensors", len(resp.Written))
	}
	d, err := h.Remote.Describe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "controlnet" || !slices.Contains(d.Capabilities, sdk.CapResiduals) {
		t.Fatalf("describe: %+v", d)
	}
	if errors.Is(err, sdk.ErrUnimplemented) {
		t.Fatal("unexpected")
	}
}
