// plugin_test.go drives the plugin through the sdktest harness (real gRPC,
// real memfd arenas) with the golden set's tiny T5, tiny connector and the
// real spiece.model: the context written into the host's buffer equals the
// connector run directly, prompts are encoded once, fixed mode pads to 128,
// and bad configurations fail with errors that name the problem. Tests skip
// when the golden set is absent.
package ella

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/plugins/sdk/sdktest"
	"github.com/sdbridge/sdbridge/safetensors"
)

// goldenDir is $SDBRIDGE_GOLDEN_DIR or ../shared/golden from the module root.
func goldenDir(t testing.TB) string {
	t.Helper()
	d := os.Getenv("SDBRIDGE_GOLDEN_DIR")
	if d == "" {
		d = filepath.Join("..", "..", "..", "shared", "golden")
	}
	if _, err := os.Stat(filepath.Join(d, "models", "ella-tiny.safetensors")); err != nil {
		t.Skipf("golden set not found (%v)", err)
	}
	return d
}

// tinyParams are EncodePrompt parameters for the golden tiny models
// (connector width 128, T5 d_model 64, 8 heads).
func tinyParams(t testing.TB, extra ...sdk.Param) sdk.Params {
	d := goldenDir(t)
	ps := sdk.Params{
		{Name: ParamELLA, Value: filepath.Join(d, "models", "ella-tiny.safetensors")},
		{Name: ParamT5, Value: filepath.Join(d, "models", "t5-tiny")},
		{Name: ParamT5Tokenizer, Value: filepath.Join(d, "data", "t5", "spiece.model")},
		{Name: ParamHeads, Value: "8"},
		{Name: ParamContextDim, Value: "128"},
	}
	return append(ps, extra...)
}

const prompt = "a red cube on top of a blue sphere, studio light"

func TestConditioningMatchesConnector(t *testing.T) {
	ps := tinyParams(t)
	p := New(nil)
	h := sdktest.New(t, p)
	ctx := context.Background()
	enc, err := h.Remote.EncodePrompt(ctx, &sdk.EncodePromptRequest{Text: prompt, Params: ps})
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 64, 128}; !slices.Equal(enc.ContextShape, want) {
		t.Fatalf("context shape %v, want %v", enc.ContextShape, want)
	}
	cfg, _ := configOf(ps)
	m, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ids := m.Tokenizer.Encode(prompt)
	if ids[len(ids)-1] != 1 {
		t.Fatalf("ids %v do not end with EOS 1", ids)
	}
	feats, err := m.T5.Encode([][]int{ids}, nil) // [1, N, 64]
	if err != nil {
		t.Fatal(err)
	}
	arena := h.NewArena(1<<20, true)
	for _, tc := range []struct {
		name string
		ts   []float32
	}{
		{"one step", []float32{999}},
		{"fractional", []float32{500.5}},
		{"batch same t", []float32{250, 250}},
		{"batch different t", []float32{1, 999}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := len(tc.ts)
			out := arena.Float32(t, "ctx", make([]float32, b*64*128), b, 64, 128)
			if _, err := h.Remote.Conditioning(ctx, &sdk.ConditioningRequest{Handle: enc.Handle, Timesteps: tc.ts, Out: out}); err != nil {
				t.Fatal(err)
			}
			got, _ := out.Float32()
			for i, ts := range tc.ts {
				want, err := m.ELLA.Forward(feats, []float32{ts}) // [1, 64, 128]
				if err != nil {
					t.Fatal(err)
				}
				if d := maxRelDiff(got[i*64*128:(i+1)*64*128], want.Data); d > 1e-5 {
					t.Errorf("row %d (t=%v): max relative difference %g", i, ts, d)
				}
			}
		})
	}
}

func maxRelDiff(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num = math.Max(num, math.Abs(d))
		den = math.Max(den, math.Abs(float64(b[i])))
	}
	return num / math.Max(den, 1e-30)
}

func TestPromptCacheAndFixedMode(t *testing.T) {
	ps := tinyParams(t)
	p := New(nil)
	h := sdktest.New(t, p)
	ctx := context.Background()
	var handles []string
	for range 2 {
		r, err := h.Remote.EncodePrompt(ctx, &sdk.EncodePromptRequest{Text: prompt, Params: ps})
		if err != nil {
			t.Fatal(err)
		}
		handles = append(handles, r.Handle)
	}
	if handles[0] == handles[1] {
		t.Errorf("two EncodePrompt calls returned the same handle %q", handles[0])
	}
	if hits, miss, n := p.cache.stats(); hits != 1 || miss != 1 || n != 1 {
		t.Errorf("cache hits %d misses %d entries %d, want 1 1 1", hits, miss, n)
	}
	fixed := append(ps, sdk.Param{Name: ParamMode, Value: ModeFixed})
	r, err := h.Remote.EncodePrompt(ctx, &sdk.EncodePromptRequest{Text: prompt, Params: fixed})
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	fh := p.handles[r.Handle]
	flex := p.handles[handles[0]]
	p.mu.Unlock()
	if fh.enc.tokens != FixedLength || fh.enc.features.Dim(1) != FixedLength {
		t.Errorf("fixed mode: %d tokens, features %v, want %d", fh.enc.tokens, fh.enc.features.Shape, FixedLength)
	}
	if flex.enc.tokens >= FixedLength || flex.enc.tokens < 2 {
		t.Errorf("flexible mode: %d tokens for a short prompt", flex.enc.tokens)
	}
	// Released handles are unknown afterwards.
	if _, err := h.Remote.ReleasePrompt(ctx, &sdk.ReleasePromptRequest{Handle: handles[0]}); err != nil {
		t.Fatal(err)
	}
	arena := h.NewArena(1<<16, true)
	out := arena.Float32(t, "ctx", make([]float32, 64*128), 1, 64, 128)
	_, err = h.Remote.Conditioning(ctx, &sdk.ConditioningRequest{Handle: handles[0], Timesteps: []float32{1}, Out: out})
	if err == nil || !strings.Contains(err.Error(), "unknown prompt handle") {
		t.Errorf("released handle: error %v", err)
	}
}

func TestLRUEvicts(t *testing.T) {
	c := newLRU(2)
	for i := range 3 {
		c.put(promptKey{text: strconv.Itoa(i)}, &encoded{tokens: i})
	}
	if _, ok := c.get(promptKey{text: "0"}); ok {
		t.Error("oldest entry was not evicted")
	}
	for _, k := range []string{"1", "2"} {
		if e, ok := c.get(promptKey{text: k}); !ok || strconv.Itoa(e.tokens) != k {
			t.Errorf("entry %s missing", k)
		}
	}
}

// narrowT5 writes a random one-layer T5 encoder folder of width 32 (the
// tiny connector takes 64) with a spiece.model copied in.
func narrowT5(t *testing.T, spiece string) string {
	t.Helper()
	const d, h, kv, ff, vocab = 32, 4, 8, 48, 32128
	dir := t.TempDir()
	cfg := `{"model_type": "t5", "architectures": ["T5EncoderModel"], "d_model": 32, "d_kv": 8, "d_ff": 48,
		"num_heads": 4, "num_layers": 1, "vocab_size": 32128, "feed_forward_proj": "gated-gelu"}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := func(name string, shape ...int) safetensors.Spec {
		return safetensors.Spec{Name: name, DType: safetensors.F16, Shape: shape}
	}
	b := "encoder.block.0.layer."
	specs := []safetensors.Spec{
		spec("shared.weight", vocab, d),
		spec(b+"0.layer_norm.weight", d),
		spec(b+"0.SelfAttention.q.weight", h*kv, d), spec(b+"0.SelfAttention.k.weight", h*kv, d),
		spec(b+"0.SelfAttention.v.weight", h*kv, d), spec(b+"0.SelfAttention.o.weight", d, h*kv),
		spec(b+"0.SelfAttention.relative_attention_bias.weight", 32, h),
		spec(b+"1.layer_norm.weight", d),
		spec(b+"1.DenseReluDense.wi_0.weight", ff, d), spec(b+"1.DenseReluDense.wi_1.weight", ff, d),
		spec(b+"1.DenseReluDense.wo.weight", d, ff),
		spec("encoder.final_layer_norm.weight", d),
	}
	if err := models.WriteRandom(filepath.Join(dir, "model.safetensors"), specs, 3, nil); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(spiece)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "spiece.model"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestBadConfigurations(t *testing.T) {
	d := goldenDir(t)
	narrow := narrowT5(t, filepath.Join(d, "data", "t5", "spiece.model"))
	notT5 := t.TempDir()
	clipConfig := `{"model_type": "clip_text_model", "architectures": ["CLIPTextModel"], "hidden_size": 768}`
	if err := os.WriteFile(filepath.Join(notT5, "config.json"), []byte(clipConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	replace := func(name, value string) sdk.Params {
		var out sdk.Params
		for _, p := range tinyParams(t) {
			if p.Name != name {
				out = append(out, p)
			}
		}
		if value != "" {
			out = append(out, sdk.Param{Name: name, Value: value})
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		params sdk.Params
		want   []string
	}{
		{"t5 folder without tokenizer", replace(ParamT5Tokenizer, ""), []string{"t5-tiny", "no tokenizer", "spiece.model"}},
		{"width does not match the U-Net", replace(ParamContextDim, "768"), []string{"ella-tiny.safetensors", "width is 128", "context dim is 768"}},
		{"non-T5 encoder folder", replace(ParamT5, notT5), []string{notT5, "clip_text_model", "not a T5"}},
		{"T5 width does not match the connector", replace(ParamT5, narrow), []string{"ella-tiny.safetensors", narrow, "takes 64 features", "gives 32"}},
		{"T5 path is a file", replace(ParamT5, filepath.Join(d, "models", "ella-tiny.safetensors")), []string{"not a folder"}},
		{"missing ELLA file", replace(ParamELLA, ""), []string{`"ella"`, "required"}},
		{"missing context dim", replace(ParamContextDim, ""), []string{"context_dim", "required"}},
		{"unknown mode", replace(ParamMode, "concat"), []string{"unknown mode", "host"}},
		{"bad heads", replace(ParamHeads, "zero"), []string{"heads"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := sdktest.New(t, New(nil))
			_, err := h.Remote.EncodePrompt(context.Background(), &sdk.EncodePromptRequest{Text: "a cat", Params: tc.params})
			if err == nil {
				t.Fatal("no error")
			}
			t.Logf("error: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestConditioningRefusesBadOutput(t *testing.T) {
	ps := tinyParams(t)
	h := sdktest.New(t, New(nil))
	ctx := context.Background()
	enc, err := h.Remote.EncodePrompt(ctx, &sdk.EncodePromptRequest{Text: "a cat", Params: ps})
	if err != nil {
		t.Fatal(err)
	}
	rw := h.NewArena(1<<18, true)
	ro := h.NewArena(1<<18, false)
	for _, tc := range []struct {
		name string
		out  *sdk.Tensor
		ts   []float32
		want string
	}{
		{"wrong width", rw.Float32(t, "ctx", make([]float32, 64*77), 1, 64, 77), []float32{1}, "want [1 64 128]"},
		{"batch differs from timesteps", rw.Float32(t, "ctx", make([]float32, 64*128), 1, 64, 128), []float32{1, 2}, "want [2 64 128]"},
		{"read-only output", ro.Float32(t, "ctx", make([]float32, 64*128), 1, 64, 128), []float32{1}, "writable"},
		{"no timesteps", rw.Float32(t, "ctx", make([]float32, 64*128), 1, 64, 128), nil, "no timesteps"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.Remote.Conditioning(ctx, &sdk.ConditioningRequest{Handle: enc.Handle, Timesteps: tc.ts, Out: tc.out})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// BenchmarkPluginConditioningTiny is one Conditioning round trip (gRPC +
// arena write) with the tiny connector: the bridge overhead per step.
func BenchmarkPluginConditioningTiny(b *testing.B) {
	ps := tinyParams(b)
	h := sdktest.New(b, New(nil))
	ctx := context.Background()
	enc, err := h.Remote.EncodePrompt(ctx, &sdk.EncodePromptRequest{Text: prompt, Params: ps})
	if err != nil {
		b.Fatal(err)
	}
	out := h.NewArena(1<<16, true).Float32(b, "ctx", make([]float32, 64*128), 1, 64, 128)
	b.SetBytes(4 * 64 * 128)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := h.Remote.Conditioning(ctx, &sdk.ConditioningRequest{Handle: enc.Handle, Timesteps: []float32{500}, Out: out}); err != nil {
			b.Fatal(err)
		}
	}
}
