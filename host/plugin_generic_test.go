// plugin_generic_test.go: the generic third-party plugin adapters. The
// Conditioner and ResidualProvider adapters run against tiny plugins
// written here, served in-process by the SDK's harness (sdktest, real gRPC
// and side socket; host arenas are mapped into it as the supervisor would);
// the weight-patch layer runs against the testplug process on top of a
// base patch; parameter checking, parsing and the infotext are tables.
package host

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/plugins/sdk/sdktest"
)

// harnessPlugin calls an in-process plugin through sdktest's Remote,
// mapping the host arenas of the refs it grants first.
type harnessPlugin struct {
	t      *testing.T
	name   string
	h      *sdktest.Harness
	mapped map[uint32]bool
}

func newHarnessPlugin(t *testing.T, name string, impl sdk.Describer) *harnessPlugin {
	return &harnessPlugin{t: t, name: name, h: sdktest.New(t, impl), mapped: map[uint32]bool{}}
}

func (p *harnessPlugin) Name() string { return p.name }

func (p *harnessPlugin) mapRefs(ctx context.Context, ts ...*sdk.Tensor) error {
	for _, x := range ts {
		if x == nil || p.mapped[x.Arena] {
			continue
		}
		a, ok := lookupArena(x.Arena)
		if !ok {
			p.t.Fatalf("tensor %q: unknown arena %d", x.Name, x.Arena)
		}
		if err := p.h.Remote.MapArena(ctx, a.ID, uint64(a.Size()), a.PluginWritable, a.Fd()); err != nil {
			return err
		}
		p.mapped[x.Arena] = true
	}
	return nil
}

func (p *harnessPlugin) Unmap(ctx context.Context, arenas ...*Arena) error {
	for _, a := range arenas {
		if p.mapped[a.ID] {
			delete(p.mapped, a.ID)
			if err := p.h.Remote.UnmapArena(ctx, a.ID); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *harnessPlugin) EncodePrompt(ctx context.Context, req *sdk.EncodePromptRequest) (*sdk.EncodePromptResponse, error) {
	return p.h.Remote.EncodePrompt(ctx, req)
}

func (p *harnessPlugin) ReleasePrompt(ctx context.Context, handle string) error {
	_, err := p.h.Remote.ReleasePrompt(ctx, &sdk.ReleasePromptRequest{Handle: handle})
	return err
}

func (p *harnessPlugin) Conditioning(ctx context.Context, req *sdk.ConditioningRequest) (*sdk.ConditioningResponse, error) {
	if err := p.mapRefs(ctx, req.Out); err != nil {
		return nil, err
	}
	return p.h.Remote.Conditioning(ctx, req)
}

func (p *harnessPlugin) Residuals(ctx context.Context, req *sdk.ResidualsRequest) (*sdk.ResidualsResponse, error) {
	if err := p.mapRefs(ctx, append([]*sdk.Tensor{req.X, req.Context}, req.Outputs...)...); err != nil {
		return nil, err
	}
	resp, err := p.h.Remote.Residuals(ctx, req)
	if err == nil {
		err = validateWritten(sdk.Refs(req.Outputs...), resp.Written)
	}
	return resp, err
}

// condPlug is a tiny Conditioner: a prompt of w words has context
// [1, w, dim]; element (l, d) at timestep t is t + 100*l + d + bias.
type condPlug struct {
	sdk.UnimplementedConditioner
	released *[]string
}

func (condPlug) Describe(context.Context, *sdk.DescribeRequest) (*sdk.DescribeResponse, error) {
	return &sdk.DescribeResponse{Name: "cond-test", Params: []sdk.ParamSpec{
		{Name: "dim", Type: sdk.ParamInt}, {Name: "bias", Type: sdk.ParamFloat, Default: "0"}}}, nil
}

func (condPlug) EncodePrompt(_ context.Context, req *sdk.EncodePromptRequest) (*sdk.EncodePromptResponse, error) {
	dim, err := strconv.Atoi(req.Params.String("dim", "4"))
	if err != nil {
		return nil, err
	}
	return &sdk.EncodePromptResponse{Handle: req.Text, ContextShape: []int{1, max(1, len(strings.Fields(req.Text))), dim}}, nil
}

func (c condPlug) ReleasePrompt(_ context.Context, req *sdk.ReleasePromptRequest) (*sdk.ReleasePromptResponse, error) {
	*c.released = append(*c.released, req.Handle)
	return &sdk.ReleasePromptResponse{}, nil
}

func (condPlug) Conditioning(_ context.Context, req *sdk.ConditioningRequest) (*sdk.ConditioningResponse, error) {
	bias, err := req.Params.Float("bias", 0)
	if err != nil {
		return nil, err
	}
	out, err := req.Out.MutableFloat32() // [1, L, D]
	if err != nil {
		return nil, err
	}
	d := req.Out.Shape[2]
	for i := range out {
		out[i] = req.Timesteps[0] + float32(100*(i/d)+i%d) + float32(bias)
	}
	return &sdk.ConditioningResponse{Written: req.Out.TensorRef}, nil
}

func TestPluginConditioner(t *testing.T) {
	ctx := context.Background()
	var released []string
	p := newHarnessPlugin(t, "cond-test", condPlug{released: &released})
	params := sdk.Params{{Name: "dim", Value: "4"}, {Name: "bias", Value: "0.5"}}
	c, err := NewPluginConditioner(ctx, p, params, 4, "a red cube", "blurry")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		t         float32
		cond      bool
		wantShape []int
		wantCalls int
	}{
		{999, true, []int{1, 3, 4}, 1},
		{999, false, []int{1, 1, 4}, 2},
		{999, true, []int{1, 3, 4}, 2}, // same t: the buffer is reused
		{500, true, []int{1, 3, 4}, 3},
		{500, false, []int{1, 1, 4}, 4},
	}
	for i, tt := range tests {
		got, err := c.Context(ctx, tt.t, tt.cond)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if !slices.Equal(got.Shape, tt.wantShape) {
			t.Errorf("step %d: shape %v, want %v", i, got.Shape, tt.wantShape)
		}
		want := nn.New(tt.wantShape...) // [1, L, D]
		for j := range want.Data {
			want.Data[j] = tt.t + float32(100*(j/4)+j%4) + 0.5
		}
		if diff := cmp.Diff(want.Data, got.Data); diff != "" {
			t.Errorf("step %d: context (-want +got):\n%s", i, diff)
		}
		if c.Calls() != tt.wantCalls {
			t.Errorf("step %d: %d plugin calls, want %d", i, c.Calls(), tt.wantCalls)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(released)
	if want := []string{"a red cube", "blurry"}; !slices.Equal(released, want) {
		t.Errorf("released %q, want %q", released, want)
	}
	if _, err := c.Context(ctx, 1, true); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("context after Close: %v", err)
	}
}

func TestPluginConditionerWidthMismatch(t *testing.T) {
	var released []string
	p := newHarnessPlugin(t, "cond-test", condPlug{released: &released})
	_, err := NewPluginConditioner(context.Background(), p, sdk.Params{{Name: "dim", Value: "6"}}, 4, "a cube", "")
	want := `plugin "cond-test": context width 6 does not match the U-Net's 4`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want %q", err, want)
	}
	if !slices.Equal(released, []string{""}) {
		t.Errorf("released %q, want the refused negative prompt's handle", released)
	}
}

// resPlug is a tiny ResidualProvider: output i (in request order) gets
// x[0] + t[0] + i everywhere; it writes nothing into the last output.
type resPlug struct {
	declareStrength bool
}

func (r resPlug) Describe(context.Context, *sdk.DescribeRequest) (*sdk.DescribeResponse, error) {
	d := &sdk.DescribeResponse{Name: "res-test"}
	if r.declareStrength {
		d.Params = []sdk.ParamSpec{{Name: StrengthParam, Type: sdk.ParamFloat}}
	}
	return d, nil
}

func (resPlug) Residuals(_ context.Context, req *sdk.ResidualsRequest) (*sdk.ResidualsResponse, error) {
	x, err := req.X.Float32() // [N, C, H, W]
	if err != nil {
		return nil, err
	}
	outs := req.Outputs[:len(req.Outputs)-1]
	for i, o := range outs {
		w, err := o.MutableFloat32()
		if err != nil {
			return nil, err
		}
		for j := range w {
			w[j] = x[0] + req.Timesteps[0] + float32(i)
		}
	}
	return &sdk.ResidualsResponse{Written: sdk.Refs(outs...)}, nil
}

func TestPluginResidualSource(t *testing.T) {
	cfg := models.UNetConfig{InChannels: 4, OutChannels: 4, ModelChannels: 8, ChannelMult: []int{1, 2}, NumResBlocks: 1,
		Attention: []bool{true, false}, TransformerDepth: 1, ContextDim: 4, NumHeads: 2}
	names := models.ResidualNames(cfg)
	tests := []struct {
		name         string
		declare      bool
		params       sdk.Params
		hostStrength bool
		wantScale    float32 // 0: no residuals, no call
	}{
		{"default strength", false, nil, true, 1},
		{"host strength", false, sdk.Params{{Name: StrengthParam, Value: "0.5"}}, true, 0.5},
		{"strength 0 skips", false, sdk.Params{{Name: StrengthParam, Value: "0"}}, true, 0},
		{"plugin owns strength", true, sdk.Params{{Name: StrengthParam, Value: "0.5"}}, false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			p := newHarnessPlugin(t, "res-test", resPlug{declareStrength: tt.declare})
			s, err := NewPluginResidualSource(p, cfg, tt.params, tt.hostStrength)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for _, n := range []int{2, 1} { // a batch change reallocates the buffers
				x := nn.New(n, 4, 8, 8) // [N, 4, h, w]
				x.Data[0] = 3
				uctx := nn.New(n, 5, 4) // [N, L, D]
				ts := slices.Repeat([]float32{10}, n)
				res, err := s.Residuals(ctx, x, ts, uctx)
				if err != nil {
					t.Fatal(err)
				}
				if tt.wantScale == 0 {
					if res != nil || s.Calls() != 0 {
						t.Fatalf("strength 0: residuals %v, %d calls", res, s.Calls())
					}
					continue
				}
				shapes := residualShapes(cfg, n, 8, 8)
				for i, name := range names {
					r, ok := res[name]
					if !ok {
						t.Fatalf("no residual %q", name)
					}
					if !slices.Equal(r.Shape, shapes[i]) {
						t.Errorf("%s: shape %v, want %v", name, r.Shape, shapes[i])
					}
					want := (3 + 10 + float32(i)) * tt.wantScale
					if i == len(names)-1 {
						want = 0 // not written by the plugin: cleared
					}
					for j, v := range r.Data {
						if v != want {
							t.Fatalf("n=%d %s[%d] = %g, want %g", n, name, j, v, want)
						}
					}
				}
			}
		})
	}
}

func TestCheckPluginParams(t *testing.T) {
	file := t.TempDir() + "/x"
	specs := []sdk.ParamSpec{
		{Name: "tensor", Type: sdk.ParamString}, {Name: "factor", Type: sdk.ParamFloat},
		{Name: "n", Type: sdk.ParamInt}, {Name: "on", Type: sdk.ParamBool},
		{Name: "path", Type: sdk.ParamFile}, {Name: "many", Type: sdk.ParamString, Repeated: true},
	}
	tests := []struct {
		name    string
		given   sdk.Params
		host    []string
		wantErr string
	}{
		{"ok", sdk.Params{{Name: "tensor", Value: "a"}, {Name: "factor", Value: "1e-3"}, {Name: "n", Value: "3"}, {Name: "on", Value: "true"}, {Name: "many", Value: "a"}, {Name: "many", Value: "b"}}, nil, ""},
		{"unknown", sdk.Params{{Name: "factr", Value: "1"}}, nil, `plugin "p": unknown parameter "factr" (accepted: tensor, factor, n, on, path, many)`},
		{"bad float", sdk.Params{{Name: "factor", Value: "x"}}, nil, `plugin "p": parameter "factor": "x" is not a float`},
		{"bad int", sdk.Params{{Name: "n", Value: "1.5"}}, nil, `plugin "p": parameter "n": "1.5" is not a int`},
		{"bad bool", sdk.Params{{Name: "on", Value: "maybe"}}, nil, `plugin "p": parameter "on": "maybe" is not a bool`},
		{"missing file", sdk.Params{{Name: "path", Value: file}}, nil, `plugin "p": parameter "path": stat ` + file},
		{"twice", sdk.Params{{Name: "factor", Value: "1"}, {Name: "factor", Value: "2"}}, nil, `plugin "p": parameter "factor" given twice`},
		{"host strength", sdk.Params{{Name: "strength", Value: "0.5"}}, []string{"strength"}, ""},
		{"host strength bad", sdk.Params{{Name: "strength", Value: "lots"}}, []string{"strength"}, `parameter "strength": "lots" is not a float`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckPluginParams("p", specs, tt.given, tt.host...)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestParsePluginUseAndInfotext(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{"example-scale", "example-scale", ""},
		{"example-scale:tensor=a.b,factor=1.1", "example-scale(tensor=a.b,factor=1.1)", ""},
		{"x:k=", "x(k=)", ""},
		{"x:=1", "", "is not key=value"},
		{"X", "", "bad name"},
	}
	var uses []PluginUse
	for _, tt := range tests {
		u, err := ParsePluginUse(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", tt.in, err)
		}
		if u.String() != tt.want {
			t.Errorf("%q: String() = %q, want %q", tt.in, u.String(), tt.want)
		}
		uses = append(uses, u)
	}
	f := PluginsInfotext(uses[:2])
	p := Parameters{Prompt: "p", Steps: 1, Sampler: "euler", Schedule: "normal", CFG: 7, Seed: 1, Width: 8, Height: 8, Extra: []InfoField{f}}
	if want := `Plugins: "example-scale, example-scale(tensor=a.b,factor=1.1)"`; !strings.Contains(p.String(), want) {
		t.Errorf("infotext lacks %q:\n%s", want, p.String())
	}
}

// TestPatchLayer stacks a testplug layer on a base patch: the layer
// patches from the base's values, swaps and resets back to them, and a
// base change underneath is followed by the layer (reset, re-apply).
func TestPatchLayer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a plugin process")
	}
	ctx := context.Background()
	_, plug := newTestSupervisor(t, "")
	orig := map[string][]float32{"a": {1, 2}, "b": {3, 4}}
	var base []*PatchTarget
	pool := NewArenaPool("layer-test", 1<<16, true)
	t.Cleanup(func() { pool.Close() })
	for _, n := range []string{"a", "b"} {
		d := pool.AllocFloat32(2)
		copy(d, orig[n])
		o := orig[n]
		base = append(base, &PatchTarget{Name: n, Data: d, Shape: []int{2}, Restore: func(dst []float32) error { copy(dst, o); return nil }})
	}
	wp, err := NewWeightPatch(base)
	if err != nil {
		t.Fatal(err)
	}
	store := &modelStore{targets: base, patch: wp}
	applyBase := func(scale string) {
		t.Helper()
		if err := store.resetLayers(); err != nil {
			t.Fatal(err)
		}
		if _, err := wp.Apply(ctx, plug, sdk.Params{{Name: "touch", Value: "a"}, {Name: "scale", Value: scale}}); err != nil {
			t.Fatal(err)
		}
		if err := store.reapplyLayers(ctx); err != nil {
			t.Fatal(err)
		}
	}
	setLayer := func(params sdk.Params) {
		t.Helper()
		if err := store.resetLayers(); err != nil {
			t.Fatal(err)
		}
		store.layers = nil
		if params == nil {
			return
		}
		l, err := newPatchLayer(base, plug, params)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.apply(ctx); err != nil {
			t.Fatal(err)
		}
		store.layers = []*patchLayer{l}
	}
	steps := []struct {
		name string
		do   func()
		want map[string][]float32
	}{
		{"base x2 on a", func() { applyBase("2") }, map[string][]float32{"a": {2, 4}, "b": {3, 4}}},
		{"layer +10 on a, b", func() {
			setLayer(sdk.Params{{Name: "touch", Value: "a"}, {Name: "touch", Value: "b"}, {Name: "add", Value: "10"}})
		}, map[string][]float32{"a": {12, 14}, "b": {13, 14}}},
		{"layer swap: +1 on b", func() { setLayer(sdk.Params{{Name: "touch", Value: "b"}, {Name: "add", Value: "1"}}) }, map[string][]float32{"a": {2, 4}, "b": {4, 5}}},
		{"base x3 under the layer", func() { applyBase("3") }, map[string][]float32{"a": {3, 6}, "b": {4, 5}}},
		{"layer on a over x3", func() { setLayer(sdk.Params{{Name: "touch", Value: "a"}, {Name: "add", Value: "1"}}) }, map[string][]float32{"a": {4, 7}, "b": {3, 4}}},
		{"layer failing keeps the base", func() {
			store.resetLayers()
			store.layers = nil
			l, err := newPatchLayer(base, plug, sdk.Params{{Name: "touch", Value: "a"}, {Name: "add", Value: "5"}, {Name: "mode", Value: "error"}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := l.apply(ctx); err == nil || !strings.Contains(err.Error(), `plugin "testplug"`) {
				t.Errorf("failing layer: %v", err)
			}
		}, map[string][]float32{"a": {3, 6}, "b": {3, 4}}},
		{"no layer", func() { setLayer(nil) }, map[string][]float32{"a": {3, 6}, "b": {3, 4}}},
	}
	for _, st := range steps {
		st.do()
		for _, tg := range base {
			if !slices.Equal(tg.Data, st.want[tg.Name]) {
				t.Errorf("%s: %s = %v, want %v", st.name, tg.Name, tg.Data, st.want[tg.Name])
			}
		}
	}
}
