// ella_test.go checks the ELLA adapter against a fake in-process plugin that
// writes t into the granted arena buffer: prompt and negative are encoded
// once, each step asks the plugin once per half and timestep, concat mode
// puts the ELLA tokens before the CLIP tokens, IntTimesteps truncates, bad
// options and bad plugin answers fail with clear errors, and Close releases
// the handles. The real plugin is covered by plugins/ella and the golden
// txt2img_ella case.
package host

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"unsafe"

	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// fakeELLA fills row i of the output with Timesteps[i] + 1000*(cond? 1 : 0).
type fakeELLA struct {
	shape    []int
	encoded  []string
	released []string
	calls    []float32   // first timestep of each Conditioning call
	batches  [][]float32 // all timesteps of each call
}

func (f *fakeELLA) Name() string { return "fake-ella" }

func (f *fakeELLA) EncodePrompt(_ context.Context, req *sdk.EncodePromptRequest) (*sdk.EncodePromptResponse, error) {
	if req.Params.String("mode", "") == "concat" {
		return nil, fmt.Errorf("concat reached the plugin")
	}
	f.encoded = append(f.encoded, req.Text)
	return &sdk.EncodePromptResponse{Handle: req.Text, ContextShape: f.shape}, nil
}

func (f *fakeELLA) ReleasePrompt(_ context.Context, h string) error {
	f.released = append(f.released, h)
	return nil
}

func (f *fakeELLA) Conditioning(_ context.Context, req *sdk.ConditioningRequest) (*sdk.ConditioningResponse, error) {
	a, ok := lookupArena(req.Out.Arena)
	if !ok || !req.Out.Writable {
		return nil, fmt.Errorf("output not in a writable arena")
	}
	if req.Out.Shape[0] != len(req.Timesteps) {
		return nil, fmt.Errorf("output %v for %d timesteps", req.Out.Shape, len(req.Timesteps))
	}
	n := sdk.Numel(req.Out.Shape)
	out := unsafe.Slice((*float32)(unsafe.Pointer(&a.Bytes()[req.Out.Offset])), n) // [T, Q, D]
	row := n / len(req.Timesteps)
	for r, t := range req.Timesteps {
		v := t
		if req.Handle == "cond" {
			v += 1000
		}
		for i := range out[r*row : (r+1)*row] {
			out[r*row+i] = v
		}
	}
	f.calls = append(f.calls, req.Timesteps[0])
	f.batches = append(f.batches, append([]float32(nil), req.Timesteps...))
	return &sdk.ConditioningResponse{Written: req.Out.TensorRef}, nil
}

// fakeCLIP returns [1, 3, 4] filled with -len(prompt).
type fakeCLIP struct{}

func (fakeCLIP) EncodePrompt(_ context.Context, p string) (*nn.Tensor, error) {
	t := nn.New(1, 3, 4)
	for i := range t.Data {
		t.Data[i] = -float32(len(p))
	}
	return t, nil
}

func TestELLAConditionerSteps(t *testing.T) {
	ctx := context.Background()
	f := &fakeELLA{shape: []int{1, 2, 4}}
	e, err := NewELLAConditioner(ctx, f, ELLAOptions{ELLA: "e", T5: "t", ContextDim: 4}, "cond", "uncond")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.encoded, ","); got != "uncond,cond" {
		t.Errorf("encoded %q, want uncond,cond", got)
	}
	for _, tc := range []struct {
		t    float32
		cond bool
		want float32
	}{
		{999, true, 1999}, {999, false, 999}, {999, true, 1999}, {500.5, true, 1500.5}, {500.5, false, 500.5},
	} {
		c, err := e.Context(ctx, tc.t, tc.cond)
		if err != nil {
			t.Fatal(err)
		}
		if c.Shape[0] != 1 || c.Shape[1] != 2 || c.Shape[2] != 4 || c.Data[0] != tc.want || c.Data[7] != tc.want {
			t.Errorf("t=%v cond=%v: context %v %v, want all %v", tc.t, tc.cond, c.Shape, c.Data, tc.want)
		}
	}
	if st := e.Stats(); st.Calls != 4 || st.Reused != 1 {
		t.Errorf("stats %+v, want 4 calls and 1 reuse", st)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if len(f.released) != 2 {
		t.Errorf("released %v, want both handles", f.released)
	}
	if _, err := e.Context(ctx, 1, true); err == nil {
		t.Error("Context after Close did not fail")
	}
}

func TestELLAConditionerConcatAndIntT(t *testing.T) {
	ctx := context.Background()
	f := &fakeELLA{shape: []int{1, 2, 4}}
	e, err := NewELLAConditioner(ctx, f, ELLAOptions{ELLA: "e", T5: "t", ContextDim: 4, Mode: ELLAConcat, CLIP: fakeCLIP{}, IntTimesteps: true}, "cond", "uncond!")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for _, tc := range []struct {
		cond       bool
		ella, clip float32
	}{{true, 1500, -4}, {false, 500, -7}} {
		c, err := e.Context(ctx, 500.7, tc.cond)
		if err != nil {
			t.Fatal(err)
		}
		if c.Shape[1] != 2+3 {
			t.Fatalf("concat context %v, want [1, 5, 4]", c.Shape)
		}
		if c.Data[0] != tc.ella || c.Data[2*4-1] != tc.ella || c.Data[2*4] != tc.clip || c.Data[len(c.Data)-1] != tc.clip {
			t.Errorf("cond=%v: context %v, want 8 x %v then 12 x %v", tc.cond, c.Data, tc.ella, tc.clip)
		}
	}
	if f.calls[0] != 500 {
		t.Errorf("plugin saw t=%v, want 500 (truncated)", f.calls[0])
	}
}

func TestELLAConditionerErrors(t *testing.T) {
	ctx := context.Background()
	ok := ELLAOptions{ELLA: "e", T5: "t", ContextDim: 4}
	for _, tc := range []struct {
		name  string
		opt   func(o *ELLAOptions)
		shape []int
		want  string
	}{
		{"unknown mode", func(o *ELLAOptions) { o.Mode = "both" }, []int{1, 2, 4}, "unknown mode"},
		{"no connector", func(o *ELLAOptions) { o.ELLA = "" }, []int{1, 2, 4}, "--ella"},
		{"no t5", func(o *ELLAOptions) { o.T5 = "" }, []int{1, 2, 4}, "--t5"},
		{"no context dim", func(o *ELLAOptions) { o.ContextDim = 0 }, []int{1, 2, 4}, "context dim"},
		{"concat without CLIP", func(o *ELLAOptions) { o.Mode = ELLAConcat }, []int{1, 2, 4}, "CLIP"},
		{"plugin width differs", func(o *ELLAOptions) {}, []int{1, 2, 8}, "want [1, Q, 4]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := ok
			tc.opt(&o)
			f := &fakeELLA{shape: tc.shape}
			_, err := NewELLAConditioner(ctx, f, o, "cond", "uncond")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one mentioning %q", err, tc.want)
			}
			if len(f.encoded) != len(f.released) {
				t.Errorf("encoded %v but released %v", f.encoded, f.released)
			}
		})
	}
}

func TestPlainPromptText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a cat", "a cat"},
		{"a (red:1.3) cat, [blurry] BREAK sitting", "a red cat, blurry sitting"},
		{`a \(literal\) bracket`, "a (literal) bracket"},
		{"The library's rows: calm", "The library's rows: calm"},
		{"", ""},
	} {
		if got := PlainPromptText(tc.in); got != tc.want {
			t.Errorf("PlainPromptText(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// restartingELLA is fakeELLA whose process can crash: a crash loses every
// handle, and the next call starts a new process.
type restartingELLA struct {
	fakeELLA
	starts    int
	dead      bool
	crashNext bool
	live      map[string]bool
}

func (f *restartingELLA) Starts() int { return f.starts }

func (f *restartingELLA) revive() {
	if f.dead || f.live == nil {
		f.starts++
		f.dead = false
		f.live = map[string]bool{}
	}
}

func (f *restartingELLA) EncodePrompt(ctx context.Context, req *sdk.EncodePromptRequest) (*sdk.EncodePromptResponse, error) {
	f.revive()
	resp, err := f.fakeELLA.EncodePrompt(ctx, req)
	if err == nil {
		f.live[resp.Handle] = true
	}
	return resp, err
}

func (f *restartingELLA) Conditioning(ctx context.Context, req *sdk.ConditioningRequest) (*sdk.ConditioningResponse, error) {
	f.revive()
	if f.crashNext {
		f.crashNext, f.dead = false, true
		return nil, &PluginError{Plugin: "fake-ella", Op: "Conditioning", Err: fmt.Errorf("%w: EOF", ErrCrashed), Killed: true}
	}
	if !f.live[req.Handle] {
		return nil, fmt.Errorf("unknown prompt handle %q", req.Handle)
	}
	return f.fakeELLA.Conditioning(ctx, req)
}

func TestELLAConditionerSurvivesPluginRestart(t *testing.T) {
	ctx := context.Background()
	f := &restartingELLA{fakeELLA: fakeELLA{shape: []int{1, 2, 4}}}
	e, err := NewELLAConditioner(ctx, f, ELLAOptions{ELLA: "e", T5: "t", ContextDim: 4}, "cond", "uncond")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	steps := []struct {
		t     float32
		cond  bool
		crash bool
		want  float32
	}{
		{999, true, false, 1999},
		{999, false, true, 999},  // crashes, restarts, re-encodes uncond, retries
		{500, true, false, 1500}, // cond's handle died with the old process
		{500, false, false, 500},
	}
	for i, s := range steps {
		f.crashNext = s.crash
		c, err := e.Context(ctx, s.t, s.cond)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if c.Data[0] != s.want {
			t.Errorf("step %d: context %v, want %v", i, c.Data[0], s.want)
		}
	}
	if st := e.Stats(); st.Reencoded != 2 || f.starts != 2 {
		t.Errorf("re-encoded %d prompts over %d starts, want 2 and 2", st.Reencoded, f.starts)
	}
}
