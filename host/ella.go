// ella.go: the host side of ELLA. ELLAConditioner is the Conditioner the
// CFG denoiser calls every step: at construction it has the ella plugin (a
// separate process) load T5 + the connector, check them against the U-Net's
// context dim, and encode the prompt and the negative prompt once each
// (EncodePrompt). Before sampling the pipeline may hand it the schedule's
// timesteps (PrepareSchedule, ella_schedule.go): one batched plugin call
// per half then computes every step's context and the steps are served
// from memory. A step at any other timestep asks the plugin for the
// connector's output at the U-Net's timestep (Conditioning), written in
// place into one of two context buffers (cond, uncond) the host allocated
// in a plugin-writable shared arena, and hands that buffer to the pipeline
// without copying.
//
// Modes (spec §6): "flexible" (default) and "fixed" are the plugin's T5
// length modes; "concat" ("ELLA + CLIP") runs flexible ELLA and appends the
// host's own CLIP context of the same prompt after the 64 ELLA tokens
// ([1, 64 + 77k, D]); the negative prompt gets its own CLIP context. The
// CLIP part is encoded once, at construction. Optionally (StripWeights)
// the text T5 sees loses A1111 emphasis syntax, as in ComfyUI-ELLA.
//
// With ELLAOptions.GPU the context buffers are device memory the plugin
// writes on the GPU (ella_device.go; ContextGPU).
//
// It does not run models itself, decide CFG, or batch rows: contexts are
// [1, L, D] and the denoiser repeats them per image. A returned context is
// valid until the next Context call for the same half (cond or uncond).
package host

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/tokenizer"
)

// ELLA modes.
const (
	ELLAFlexible = "flexible" // T5 pieces + EOS, no padding (default)
	ELLAFixed    = "fixed"    // 128 tokens, padded with 0, attention mask
	ELLAConcat   = "concat"   // flexible ELLA tokens, then the CLIP tokens
)

// ELLAModes lists the modes, default first.
var ELLAModes = []string{ELLAFlexible, ELLAFixed, ELLAConcat}

// ELLAOptions configure an ELLAConditioner.
type ELLAOptions struct {
	ELLA        string // connector file
	T5          string // T5 encoder folder
	T5Tokenizer string // spiece.model / tokenizer.json / folder; "" = in T5
	Mode        string // ELLAModes ("" = flexible)
	Heads       int    // connector heads (0 = 8)
	T5FP16      bool   // emulate an all-fp16 T5
	ContextDim  int    // the U-Net's cross-attention context dim (required)
	// IntTimesteps truncates the U-Net's t to an integer before the
	// connector (ComfyUI-ELLA compatibility); the default passes t as is.
	IntTimesteps bool
	// CLIP encodes the CLIP part of "concat" mode (the pipeline's
	// PromptEncoder); unused otherwise.
	CLIP PromptEncoder
	// StripWeights removes A1111 emphasis syntax ("(word:1.2)", "[word]",
	// BREAK) from the text T5 sees, keeping the words (ComfyUI-ELLA strips
	// weights too; T5 has no emphasis). The CLIP part of concat mode still
	// gets the syntax.
	StripWeights bool
	// GPU, when set, puts the context buffers in its device memory (one
	// device arena per half, in its dtype; ella_device.go): the plugin runs
	// the connector on the GPU and ContextGPU hands the buffer to a U-Net
	// on the GPU without copies. The plugin must take device arenas.
	GPU *nn.GPU
}

// PlainPromptText is prompt without A1111 emphasis syntax: the fragments'
// text joined, BREAK as a space.
func PlainPromptText(prompt string) string {
	var b strings.Builder
	for _, f := range tokenizer.ParsePromptAttention(prompt) {
		if f.Break {
			b.WriteByte(' ')
			continue
		}
		b.WriteString(f.Text)
	}
	return strings.Join(strings.Fields(b.String()), " ")
}

// ConditionerPlugin is the plugin API the adapter needs (*Plugin has it).
type ConditionerPlugin interface {
	Name() string
	EncodePrompt(ctx context.Context, req *sdk.EncodePromptRequest) (*sdk.EncodePromptResponse, error)
	ReleasePrompt(ctx context.Context, handle string) error
	Conditioning(ctx context.Context, req *sdk.ConditioningRequest) (*sdk.ConditioningResponse, error)
}

// ELLAStats count the adapter's work.
type ELLAStats struct {
	EncodeTime    time.Duration // EncodePrompt calls (T5 once per prompt)
	Calls         int           // plugin Conditioning calls (ScheduleCalls + StepCalls)
	ScheduleCalls int           // batched calls for a whole schedule (PrepareSchedule)
	StepCalls     int           // per-step calls (timesteps outside the schedule)
	Scheduled     int           // Context calls served from the precomputed schedule
	Reencoded     int           // prompts encoded again after a plugin restart
	Reused        int           // Context calls answered from the last step's buffer
	PluginTime    time.Duration // wall time inside Conditioning calls
}

// ELLAConditioner is a Conditioner backed by the ella plugin.
type ELLAConditioner struct {
	plugin ConditionerPlugin
	opt    ELLAOptions
	params sdk.Params
	arena  *Arena
	halves [2]*ellaHalf // uncond, cond
	stats  ELLAStats
}

// ellaHalf is the state of the cond or the uncond prompt.
type ellaHalf struct {
	handle string
	t5Text string        // the text the plugin encoded
	shape  []int         // [1, Q, D] announced by the plugin
	starts int           // plugin process starts when encoded (-1: unknown)
	ref    sdk.TensorRef // [1, Q, D] in the arena, plugin-writable
	buf    []float32     // the same memory, host view
	view   *nn.Tensor    // [1, Q, D] tensor over buf
	clip   *nn.Tensor    // [1, 77k, D] concat mode only
	out    *nn.Tensor    // [1, Q(+77k), D] returned context
	lastT  float32
	valid  bool
	sched  *ellaSchedule // the precomputed schedule (ella_schedule.go), or nil

	// Device mode (ella_device.go): the whole context [1, Q(+77k), D] on
	// the GPU, the plugin writing its first Q rows (ref); buf is nil and
	// out a host copy made only by Context.
	dev   *cuda.Buffer
	devA  *Arena
	gpu   *nn.GPUTensor
	fresh bool // out holds the device context of lastT
}

// NewELLAConditioner checks opt, has the plugin load and check its models,
// and encodes prompt and negative; an error names the plugin and the file
// at fault before any sampling.
func NewELLAConditioner(ctx context.Context, p ConditionerPlugin, opt ELLAOptions, prompt, negative string) (*ELLAConditioner, error) {
	if opt.Mode == "" {
		opt.Mode = ELLAFlexible
	}
	switch {
	case !slices.Contains(ELLAModes, opt.Mode):
		return nil, fmt.Errorf("ella: unknown mode %q (valid: %v)", opt.Mode, ELLAModes)
	case opt.ELLA == "":
		return nil, errors.New("ella: no connector file (--ella FILE)")
	case opt.T5 == "":
		return nil, errors.New("ella: no T5 encoder folder (--t5 DIR)")
	case opt.ContextDim < 1:
		return nil, errors.New("ella: the U-Net's context dim is unknown")
	case opt.Mode == ELLAConcat && opt.CLIP == nil:
		return nil, errors.New("ella: concat mode needs the checkpoint's CLIP text encoder")
	}
	e := &ELLAConditioner{plugin: p, opt: opt, params: ellaParams(opt)}
	for i, text := range []string{negative, prompt} {
		h, err := e.newHalf(ctx, text, i == 1)
		if err != nil {
			e.Close()
			return nil, err
		}
		e.halves[i] = h
	}
	return e, nil
}

// ellaParams are the plugin parameters of opt.
func ellaParams(opt ELLAOptions) sdk.Params {
	mode := opt.Mode
	if mode == ELLAConcat {
		mode = ELLAFlexible
	}
	ps := sdk.Params{
		{Name: "ella", Value: opt.ELLA},
		{Name: "t5", Value: opt.T5},
		{Name: "context_dim", Value: strconv.Itoa(opt.ContextDim)},
		{Name: "mode", Value: mode},
	}
	if opt.T5Tokenizer != "" {
		ps = append(ps, sdk.Param{Name: "t5_tokenizer", Value: opt.T5Tokenizer})
	}
	if opt.Heads > 0 {
		ps = append(ps, sdk.Param{Name: "heads", Value: strconv.Itoa(opt.Heads)})
	}
	if opt.T5FP16 {
		ps = append(ps, sdk.Param{Name: "t5_fp16", Value: "true"})
	}
	if opt.GPU != nil {
		// T5 on the host's GPU too (plugins that do not know the
		// parameter ignore it).
		ps = append(ps, sdk.Param{Name: "device", Value: fmt.Sprintf("cuda:%d", opt.GPU.Dev.Ordinal)})
	}
	return ps
}

// newHalf encodes one prompt and gives it a context buffer.
func (e *ELLAConditioner) newHalf(ctx context.Context, text string, cond bool) (*ellaHalf, error) {
	what := "negative prompt"
	if cond {
		what = "prompt"
	}
	t0 := time.Now()
	t5Text := text
	if e.opt.StripWeights {
		t5Text = PlainPromptText(text)
	}
	resp, err := e.plugin.EncodePrompt(ctx, &sdk.EncodePromptRequest{Text: t5Text, Params: e.params})
	e.stats.EncodeTime += time.Since(t0)
	if err != nil {
		return nil, explainPluginOOM(fmt.Errorf("ella: %s: %w", what, err), e.opt.GPU)
	}
	h := &ellaHalf{handle: resp.Handle, t5Text: t5Text, shape: resp.ContextShape, starts: e.pluginStarts()}
	s := resp.ContextShape
	if len(s) != 3 || s[0] != 1 || s[1] < 1 || s[2] != e.opt.ContextDim {
		e.plugin.ReleasePrompt(ctx, resp.Handle)
		return nil, fmt.Errorf("ella: plugin %q announced context shape %v, want [1, Q, %d]", e.plugin.Name(), s, e.opt.ContextDim)
	}
	n := s[1] * s[2]
	if e.opt.GPU != nil {
		if err := e.deviceHalf(ctx, h, text, cond, what); err != nil {
			e.plugin.ReleasePrompt(ctx, resp.Handle)
			return nil, err
		}
		return h, nil
	}
	if e.arena == nil {
		// Both halves share one arena; the shapes are equal.
		if e.arena, err = NewArena("ella-context", 2*(4*n+arenaAlign), true); err != nil {
			e.plugin.ReleasePrompt(ctx, resp.Handle)
			return nil, fmt.Errorf("ella: %w", err)
		}
	}
	if h.buf = e.arena.AllocFloat32(n); h.buf == nil {
		e.plugin.ReleasePrompt(ctx, resp.Handle)
		return nil, fmt.Errorf("ella: context arena full (context shape %v)", s)
	}
	name := "ella.uncond"
	if cond {
		name = "ella.cond"
	}
	if h.ref, err = RefOf(name, h.buf, s, true); err != nil {
		e.plugin.ReleasePrompt(ctx, resp.Handle)
		return nil, fmt.Errorf("ella: %w", err)
	}
	h.view = nn.From(h.buf, s...) // [1, Q, D] view of the arena
	h.out = h.view
	if e.opt.Mode == ELLAConcat {
		clip, err := e.opt.CLIP.EncodePrompt(ctx, text) // [1, 77k, D]
		if err != nil {
			e.plugin.ReleasePrompt(ctx, resp.Handle)
			return nil, fmt.Errorf("ella + clip: %s: %w", what, err)
		}
		if len(clip.Shape) != 3 || clip.Shape[0] != 1 || clip.Shape[2] != s[2] {
			e.plugin.ReleasePrompt(ctx, resp.Handle)
			return nil, fmt.Errorf("ella + clip: CLIP context has shape %v, want [1, L, %d]", clip.Shape, s[2])
		}
		h.clip = clip
		h.out = nn.New(1, s[1]+clip.Shape[1], s[2]) // [1, Q + 77k, D] ELLA first
		copy(h.out.Data[n:], clip.Data)             // CLIP tokens after the ELLA tokens
	}
	return h, nil
}

// Context implements Conditioner: the context [1, L, D] of the cond or
// uncond prompt at U-Net timestep t. In device mode it is downloaded from
// the device buffer (ContextGPU does not copy).
func (e *ELLAConditioner) Context(ctx context.Context, t float32, cond bool) (*nn.Tensor, error) {
	h, err := e.step(ctx, t, cond)
	if err != nil {
		return nil, err
	}
	if h.gpu == nil {
		return h.out, nil
	}
	if !h.fresh {
		d, err := h.gpu.Download() // [1, L, D]
		if err != nil {
			return nil, fmt.Errorf("ella: downloading the context: %w", err)
		}
		h.out, h.fresh = d, true
	}
	return h.out, nil
}

// step brings h's context to timestep t (plugin call unless it is there).
func (e *ELLAConditioner) step(ctx context.Context, t float32, cond bool) (*ellaHalf, error) {
	h := e.halves[0]
	if cond {
		h = e.halves[1]
	}
	if h == nil {
		return nil, errors.New("ella: conditioner is closed")
	}
	if e.opt.IntTimesteps {
		t = float32(math.Trunc(float64(t)))
	}
	if h.valid && h.lastT == t {
		e.stats.Reused++
		return h, nil
	}
	h.valid, h.fresh = false, false
	if ok, err := e.fromSchedule(h, t); err != nil || ok {
		if err != nil {
			return nil, fmt.Errorf("ella: %w", err)
		}
		h.lastT, h.valid = t, true
		return h, nil
	}
	if err := e.callPlugin(ctx, h, []float32{t}, h.ref, false); err != nil {
		return nil, fmt.Errorf("ella: %w", err)
	}
	if h.gpu == nil {
		if h.clip != nil {
			copy(h.out.Data, h.buf) // [1, Q, D] before the CLIP tokens
		} else {
			h.out = h.view // [1, Q, D]
		}
	}
	h.lastT, h.valid = t, true
	return h, nil
}

// callPlugin has the plugin write h's contexts at ts into out [len(ts), Q,
// D], encoding h's prompt again first if the plugin restarted since, and
// retrying once on a fresh process if it crashes. batched counts the call
// as a schedule call rather than a step call.
func (e *ELLAConditioner) callPlugin(ctx context.Context, h *ellaHalf, ts []float32, out sdk.TensorRef, batched bool) error {
	if st := e.pluginStarts(); st >= 0 && st != h.starts {
		// The plugin restarted since this prompt was encoded: its handle is gone.
		if err := e.reencode(ctx, h); err != nil {
			return err
		}
	}
	err := e.conditioning(ctx, h, ts, out, batched)
	if errors.Is(err, ErrCrashed) && ctx.Err() == nil {
		// One retry on a fresh process (it loads the models again).
		if err = e.reencode(ctx, h); err == nil {
			err = e.conditioning(ctx, h, ts, out, batched)
		}
	}
	return err
}

// conditioning has the plugin write h's contexts at ts into out [len(ts),
// Q, D] (one plugin call).
func (e *ELLAConditioner) conditioning(ctx context.Context, h *ellaHalf, ts []float32, out sdk.TensorRef, batched bool) error {
	t0 := time.Now()
	_, err := e.plugin.Conditioning(ctx, &sdk.ConditioningRequest{
		Handle: h.handle, Timesteps: ts, Out: sdk.Ref(out),
	})
	e.stats.PluginTime += time.Since(t0)
	e.stats.Calls++
	if batched {
		e.stats.ScheduleCalls++
	} else {
		e.stats.StepCalls++
	}
	return explainPluginOOM(err, e.opt.GPU) // the plugin's T5 and connector run on the GPU
}

// pluginStarts is the plugin's process start count, or -1 if the plugin
// does not say (*Plugin does).
func (e *ELLAConditioner) pluginStarts() int {
	if s, ok := e.plugin.(interface{ Starts() int }); ok {
		return s.Starts()
	}
	return -1
}

// reencode encodes h's prompt again (after a plugin restart lost its
// handle); the context shape must not change.
func (e *ELLAConditioner) reencode(ctx context.Context, h *ellaHalf) error {
	t0 := time.Now()
	resp, err := e.plugin.EncodePrompt(ctx, &sdk.EncodePromptRequest{Text: h.t5Text, Params: e.params})
	e.stats.EncodeTime += time.Since(t0)
	if err != nil {
		return explainPluginOOM(fmt.Errorf("re-encoding after a plugin restart: %w", err), e.opt.GPU)
	}
	if !slices.Equal(resp.ContextShape, h.shape) {
		e.plugin.ReleasePrompt(ctx, resp.Handle)
		return fmt.Errorf("plugin %q: context shape changed from %v to %v after a restart", e.plugin.Name(), h.shape, resp.ContextShape)
	}
	h.handle, h.starts = resp.Handle, e.pluginStarts()
	e.stats.Reencoded++
	return nil
}

// Stats returns the work done so far.
func (e *ELLAConditioner) Stats() ELLAStats { return e.stats }

// Close releases the prompt handles and the context arena. Contexts
// returned earlier must not be used afterwards.
func (e *ELLAConditioner) Close() error {
	var errs []error
	running := e.pluginRunning()
	for i, h := range e.halves {
		// A handle from an earlier or dead process is gone with it (and
		// releasing it would start a new one).
		if h != nil && running && h.starts == e.pluginStarts() {
			errs = append(errs, e.plugin.ReleasePrompt(context.Background(), h.handle))
		}
		if h != nil {
			errs = append(errs, e.closeSchedule(h, running), e.closeDeviceHalf(h, running))
		}
		e.halves[i] = nil
	}
	if e.arena != nil {
		// Drop the plugin's mapping first, or a long run (dpg) would leave
		// one mapping per generation in the plugin process.
		if u, ok := e.plugin.(interface {
			Unmap(context.Context, ...*Arena) error
		}); ok && running {
			errs = append(errs, u.Unmap(context.Background(), e.arena))
		}
		errs = append(errs, e.arena.Close())
		e.arena = nil
	}
	return errors.Join(errs...)
}
