// controlnet.go: the host side of ControlNet. ControlNetSource is the
// ResidualSource the CFG denoiser calls every step; it asks the controlnet
// plugin (a separate process) for the residuals of each active net, with x,
// t and the context in shared arenas and the residuals written in place
// into buffers the host allocated, then hands them to the U-Net unchanged
// (no copy). With ControlNetOptions.GPU the buffers are device memory the
// plugin writes on the GPU (ResidualsGPU hands them on as device tensors),
// and the context may be a device tensor too (ResidualsGPUContext,
// controlnet_devctx.go).
//
// Controls (spec controlnet.md sections 5-8):
//   - Strength multiplies all 13 residuals; several nets are summed (the
//     plugin accumulates into the same buffers, one fused multiply-add).
//   - Start/End are fractions of the sampling steps with A1111 semantics
//     (sd-webui-controlnet hook.py): step i of N (0-based) runs the net iff
//     Start <= i/N <= End; with SigmaRange they are ComfyUI's percents of the
//     noise schedule instead. The step of a call is the schedule step whose
//     interval holds its timestep, so samplers with several model calls per
//     step (Heun, DPM++ 2S) stay in the same step. A net outside its range is
//     not run at all; with no net active the step gets no residuals.
//   - Guess mode ("ControlNet is more important"): residual i scaled by
//     0.825^(12-i) and applied to the cond rows only (uncond rows get zero
//     and the net does not run on them), as cldm's gradio demos.
//   - Both CFG halves get control by default, each with its own context (the
//     one the U-Net gets: ELLA's when ELLA is on). Context overrides the
//     context of the cond rows only (a separate plain-CLIP prompt).
//   - GlobalPool (shuffle nets): residuals replaced by their spatial means,
//     on the cond rows only.
//
// Which rows are cond: the denoiser batches [uncond, cond] (2B rows), or
// runs B cond rows alone when CFG = 1, or calls uncond then cond with B rows
// each when the two contexts differ in length (cfg.go); the adapter tracks
// that order. It does not preprocess or resize hint images (package
// plugins/controlnet does, before the generation) and it refuses a hint that
// is not exactly 8x the latent.
package host

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"
	"unsafe"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/controlnet"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// GuessModeBase is the soft-injection base: residual i of 13 is scaled by
// GuessModeBase^(12-i) (cldm gradio demos; A1111 "ControlNet is more
// important").
const GuessModeBase = 0.825

// ControlNetUnit is one ControlNet in a generation.
type ControlNetUnit struct {
	Path     string     // ControlNet file or diffusers directory
	Hint     *nn.Tensor // [1 or B, 3, 8h, 8w], RGB in [0, 1]
	Strength float64    // multiplies every residual (1 = as trained)
	// Start and End bound the steps the net runs on, as fractions of the
	// steps (A1111 semantics; 0 and 1 = every step).
	Start, End float64
	// SigmaRange reads Start and End as ComfyUI's start_percent/end_percent
	// of the noise schedule instead: the net runs while the model timestep
	// t satisfies (1-End)*999 <= t <= (1-Start)*999 (0 and 1 are open ends).
	SigmaRange bool
	Guess      bool // soft weights 0.825^(12-i) and cond rows only
	CondOnly   bool // control on the cond rows only (implied by Guess, GlobalPool)
	// GlobalPool replaces each residual by its spatial mean, cond rows only
	// (v1.1 shuffle nets; A1111 and ComfyUI turn it on for "shuffle" files).
	GlobalPool bool
	// Context, when set ([1, L, D]), replaces the U-Net's context for this
	// net on the cond rows (a separate prompt); uncond rows keep theirs.
	Context *nn.Tensor
}

// ControlNetOptions describe the generation the source serves.
type ControlNetOptions struct {
	UNet          models.UNetConfig // the loaded U-Net's configuration
	Schedule      *DiscreteSchedule
	ScheduleName  string // as in Request.Schedule
	Steps         int
	Batch         int     // images per generation (0 means 1)
	CFG           float64 // as in Request.CFG
	Width, Height int     // pixels; the hint must match
	// GPU, when set, puts the residual buffers in its device memory (a
	// device arena, in its dtype): the plugin computes on the GPU and
	// ResidualsGPU hands the buffers to a U-Net on the GPU without copies.
	// The plugin must take device arenas (protocol minor 2).
	GPU *nn.GPU
}

// ResidualPlugin is the plugin call the source needs (*Plugin has it).
type ResidualPlugin interface {
	Name() string
	Residuals(ctx context.Context, req *sdk.ResidualsRequest) (*sdk.ResidualsResponse, error)
}

// ControlNetStats count the source's work (benchmarks, logs).
type ControlNetStats struct {
	Calls      int           // plugin Residuals calls
	PluginTime time.Duration // wall time inside those calls (compute + round trip)
	HandOff    time.Duration // host time copying inputs into arenas and zeroing
	Skipped    int           // model calls that got no control (out of range)
}

// ControlNetSource is a ResidualSource backed by the controlnet plugin. The
// residuals it returns live in its shared buffers and stay valid until the
// next call; calls must not overlap (the denoiser makes them one by one).
type ControlNetSource struct {
	plugin ResidualPlugin
	opt    ControlNetOptions
	units  []*cnUnit
	unetP  string    // encoded U-Net config
	stepT  []float32 // timestep of each sampling step, decreasing

	bufs   *residualBuffers
	inputs *inputArena
	devCtx *deviceContext // staging of device contexts (controlnet_devctx.go)

	// split-CFG row tracking: the last B-row call was uncond at lastT
	lastUncond bool
	lastT      float32

	stats ControlNetStats
	// starts is the plugin's start count when the source was made (for
	// plugins that report it): a restart during the generation fails it.
	starts int
}

// restartCounter is implemented by *Plugin: how many times its process
// was started.
type restartCounter interface{ Starts() int }

type cnUnit struct {
	ControlNetUnit
	index    int
	hintMem  []float32 // in hint, read-only for the plugin
	hintKey  string    // hash of the hint image
	hint     *Arena
	scales   string // ParamScales value
	condOnly bool
}

// NewControlNetSource checks the units, puts each hint in a read-only arena
// and has the plugin load and check every net against opt.UNet, so a wrong
// file fails before the first step.
func NewControlNetSource(ctx context.Context, p ResidualPlugin, opt ControlNetOptions, units []ControlNetUnit) (*ControlNetSource, error) {
	if len(units) == 0 {
		return nil, errors.New("controlnet: no units")
	}
	if opt.Schedule == nil || opt.Steps < 1 {
		return nil, errors.New("controlnet: options need the schedule and the step count")
	}
	sigmas, err := opt.Schedule.SamplingSigmas(opt.ScheduleName, opt.Steps)
	if err != nil {
		return nil, fmt.Errorf("controlnet: %w", err)
	}
	s := &ControlNetSource{plugin: p, opt: opt, unetP: controlnet.EncodeUNetConfig(opt.UNet)}
	for i := range opt.Steps {
		s.stepT = append(s.stepT, float32(opt.Schedule.SigmaToT(sigmas[i])))
	}
	names := models.ResidualNames(opt.UNet)
	for i, u := range units {
		cu, err := s.newUnit(i, u, len(names))
		if err != nil {
			s.Close()
			return nil, err
		}
		s.units = append(s.units, cu)
	}
	for _, u := range s.units {
		params := s.params(u, "", false, controlnet.OpLoad)
		if _, err := p.Residuals(ctx, &sdk.ResidualsRequest{Params: params}); err != nil {
			s.Close()
			return nil, explainPluginOOM(fmt.Errorf("controlnet %d (%s): %w", u.index, u.Path, err), opt.GPU)
		}
	}
	if rc, ok := p.(restartCounter); ok {
		s.starts = rc.Starts()
	}
	return s, nil
}

func (s *ControlNetSource) newUnit(i int, u ControlNetUnit, nres int) (*cnUnit, error) {
	b := max(s.opt.Batch, 1)
	switch {
	case u.Path == "":
		return nil, fmt.Errorf("controlnet %d: no file", i)
	case u.Hint == nil:
		return nil, fmt.Errorf("controlnet %d (%s): no control image", i, u.Path)
	case len(u.Hint.Shape) != 4 || (u.Hint.Shape[0] != 1 && u.Hint.Shape[0] != b) || u.Hint.Shape[1] != 3:
		return nil, fmt.Errorf("controlnet %d (%s): control image has shape %v, want [%s, 3, H, W]", i, u.Path, u.Hint.Shape, batchDims(b))
	case s.opt.Width > 0 && (u.Hint.Shape[2] != s.opt.Height || u.Hint.Shape[3] != s.opt.Width):
		return nil, fmt.Errorf("controlnet %d (%s): control image is %dx%d px, the generation is %dx%d: resize it first (resize, crop or pad)",
			i, u.Path, u.Hint.Shape[3], u.Hint.Shape[2], s.opt.Width, s.opt.Height)
	case math.IsNaN(u.Start) || math.IsNaN(u.End) || u.Start < 0 || u.End > 1 || u.Start > u.End:
		return nil, fmt.Errorf("controlnet %d (%s): start %v / end %v: want 0 <= start <= end <= 1", i, u.Path, u.Start, u.End)
	case u.Context != nil && (len(u.Context.Shape) != 3 || u.Context.Shape[0] != 1 || u.Context.Shape[2] != s.opt.UNet.ContextDim):
		return nil, fmt.Errorf("controlnet %d (%s): prompt override has shape %v, want [1, L, %d]", i, u.Path, shapeOfT(u.Context), s.opt.UNet.ContextDim)
	}
	cu := &cnUnit{ControlNetUnit: u, index: i, condOnly: u.CondOnly || u.Guess || u.GlobalPool}
	// One hint per image ([B, ...]) is stored twice, [uncond rows, cond
	// rows], so every run of rows gets a contiguous slice; a single hint is
	// broadcast by the plugin.
	copies := 1
	if u.Hint.Shape[0] > 1 {
		copies = 2
	}
	n := copies * len(u.Hint.Data)
	a, err := NewArena("controlnet-hint", 4*n+arenaAlign, false)
	if err != nil {
		return nil, fmt.Errorf("controlnet %d: %w", i, err)
	}
	cu.hint = a
	cu.hintMem = a.AllocFloat32(n)
	for c := range copies {
		copy(cu.hintMem[c*len(u.Hint.Data):], u.Hint.Data)
	}
	sum := sha256.Sum256(unsafe.Slice((*byte)(unsafe.Pointer(&u.Hint.Data[0])), 4*len(u.Hint.Data)))
	cu.hintKey = hex.EncodeToString(sum[:16])
	scales := make([]float32, nres)
	for j := range scales {
		scales[j] = float32(u.Strength)
		if u.Guess {
			scales[j] = float32(u.Strength * math.Pow(GuessModeBase, float64(nres-1-j)))
		}
	}
	cu.scales = controlnet.EncodeScales(scales)
	return cu, nil
}

// hintFor returns the hint ref for rows [r0, r1) and its cache key.
func (u *cnUnit) hintFor(r0, r1 int) (*sdk.Tensor, string, error) {
	shape := u.Hint.Shape
	if shape[0] == 1 {
		ref, err := RefOf(controlnet.HintInput, u.hintMem, shape, false)
		return sdk.Ref(ref), u.hintKey, err
	}
	per := shapeNumel(shape[1:])
	ref, err := RefOf(controlnet.HintInput, u.hintMem[r0*per:r1*per], []int{r1 - r0, shape[1], shape[2], shape[3]}, false)
	return sdk.Ref(ref), fmt.Sprintf("%s:%d-%d", u.hintKey, r0, r1), err
}

func batchDims(b int) string {
	if b == 1 {
		return "1"
	}
	return fmt.Sprintf("1 or %d", b)
}

func shapeOfT(t *nn.Tensor) []int {
	if t == nil {
		return nil
	}
	return t.Shape
}

func (s *ControlNetSource) params(u *cnUnit, hintKey string, accumulate bool, op string) sdk.Params {
	ps := sdk.Params{
		{Name: controlnet.ParamNet, Value: u.Path},
		{Name: controlnet.ParamUNet, Value: s.unetP},
		{Name: controlnet.ParamOp, Value: op},
	}
	if op == controlnet.OpResiduals {
		ps = append(ps,
			sdk.Param{Name: controlnet.ParamHintKey, Value: hintKey},
			sdk.Param{Name: controlnet.ParamScales, Value: u.scales},
			sdk.Param{Name: controlnet.ParamAccumulate, Value: fmt.Sprint(accumulate)},
			sdk.Param{Name: controlnet.ParamGlobalPool, Value: fmt.Sprint(u.GlobalPool)})
	}
	return ps
}

// Stats returns the work counters so far.
func (s *ControlNetSource) Stats() ControlNetStats { return s.stats }

// Close frees the arenas (the plugin process keeps its mappings until it
// exits or unmaps them).
func (s *ControlNetSource) Close() error {
	var errs []error
	for _, u := range s.units {
		if u.hint != nil {
			errs = append(errs, u.hint.Close())
			u.hint = nil
		}
	}
	if s.bufs != nil {
		errs = append(errs, s.closeBuffers())
	}
	if s.inputs != nil {
		errs = append(errs, s.inputs.close())
		s.inputs = nil
	}
	errs = append(errs, s.closeDeviceContext())
	return errors.Join(errs...)
}

// arenaUnmapper is implemented by *Plugin: drop a plugin's mappings.
type arenaUnmapper interface {
	Unmap(ctx context.Context, arenas ...*Arena) error
}

// closeBuffers frees the residual buffers; device buffers are first
// unmapped by the plugin (legacy IPC: the exporter must outlive importers).
func (s *ControlNetSource) closeBuffers() error {
	var err error
	if s.bufs.dev != nil {
		if um, ok := s.plugin.(arenaUnmapper); ok {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err = um.Unmap(ctx, s.bufs.arena)
			cancel()
		}
	}
	if cerr := s.bufs.close(); err == nil {
		err = cerr
	}
	s.bufs = nil
	return err
}

// step is the sampling step whose interval holds timestep t.
func (s *ControlNetSource) step(t float32) int {
	i := 0
	for i+1 < len(s.stepT) && s.stepT[i+1] >= t {
		i++
	}
	return i
}

// active says whether the unit runs at sampling step step (of steps) whose
// model timestep is t.
func (u *cnUnit) active(step, steps int, t float32) bool {
	if u.SigmaRange {
		tt := float64(t)
		return (u.Start == 0 || tt <= (1-u.Start)*999) && (u.End == 1 || tt >= (1-u.End)*999)
	}
	p := float64(step) / float64(steps)
	return p >= u.Start && p <= u.End
}

// condRows says which of the n rows of this call are conditional.
func (s *ControlNetSource) condRows(n int, t float32) ([]bool, error) {
	b := max(s.opt.Batch, 1)
	cond := make([]bool, n)
	switch {
	case n == b && s.opt.CFG == 1:
		for i := range cond {
			cond[i] = true
		}
	case n == 2*b:
		for i := b; i < n; i++ {
			cond[i] = true
		}
	case n == b:
		// Separate calls, uncond first (contexts of different lengths).
		if s.lastUncond && s.lastT == t {
			for i := range cond {
				cond[i] = true
			}
			s.lastUncond = false
		} else {
			s.lastUncond, s.lastT = true, t
		}
	default:
		return nil, fmt.Errorf("controlnet: model batch of %d rows for a generation of %d images", n, b)
	}
	return cond, nil
}

// run is one plugin call over rows [r0, r1).
type run struct {
	r0, r1 int
	ctx    cnContext // [r1-r0, L, D]
}

// runs splits the rows a unit controls into plugin calls: one call when all
// its rows share the U-Net context layout, else one per CFG half.
func (u *cnUnit) runs(cond []bool, uctx cnContext) ([]run, error) {
	var out []run
	n := len(cond)
	var rowsErr error
	rowsCtx := func(r0, r1 int) cnContext {
		c, err := uctx.rows(r0, r1) // [r1-r0, L, D]
		rowsErr = errors.Join(rowsErr, err)
		return c
	}
	for r0 := 0; r0 < n; {
		r1 := r0 + 1
		for r1 < n && cond[r1] == cond[r0] {
			r1++
		}
		switch {
		case u.condOnly && !cond[r0]:
		case cond[r0] && u.Context != nil:
			c, err := repeatBatch(u.Context, r1-r0)
			if err != nil {
				return nil, err
			}
			out = append(out, run{r0, r1, cnContext{host: c}})
		default:
			out = append(out, run{r0, r1, rowsCtx(r0, r1)})
		}
		r0 = r1
	}
	// Merge neighbours that use the U-Net's own context.
	if len(out) == 2 && u.Context == nil && out[0].r1 == out[1].r0 {
		out = []run{{out[0].r0, out[1].r1, rowsCtx(out[0].r0, out[1].r1)}}
	}
	if rowsErr != nil {
		return nil, fmt.Errorf("context rows: %w", rowsErr)
	}
	return out, nil
}

// Residuals implements ResidualSource. With ControlNetOptions.GPU the
// residuals are downloaded from the device buffers (ResidualsGPU does not).
func (s *ControlNetSource) Residuals(ctx context.Context, x *nn.Tensor, t []float32, uctx *nn.Tensor) (models.Residuals, error) {
	wrote, err := s.compute(ctx, x, t, cnContext{host: uctx})
	if err != nil || !wrote {
		return nil, err
	}
	return s.bufs.residuals()
}

// ResidualsGPU is Residuals for a U-Net on the GPU (ControlNetOptions.GPU
// set): views of the device buffers, valid until the next call; nil when
// no net ran on this call.
func (s *ControlNetSource) ResidualsGPU(ctx context.Context, x *nn.Tensor, t []float32, uctx *nn.Tensor) (models.GPUResiduals, error) {
	if s.opt.GPU == nil {
		return nil, errors.New("controlnet: ResidualsGPU without ControlNetOptions.GPU")
	}
	wrote, err := s.compute(ctx, x, t, cnContext{host: uctx})
	if err != nil || !wrote {
		return nil, err
	}
	return s.bufs.gpuResiduals(), nil
}

// compute runs the active nets of this call into the buffers; wrote is
// false when none ran.
func (s *ControlNetSource) compute(ctx context.Context, x *nn.Tensor, t []float32, uctx cnContext) (bool, error) {
	if cs := uctx.shape(); len(x.Shape) != 4 || len(t) != x.Shape[0] || len(cs) != 3 || cs[0] != x.Shape[0] {
		return false, fmt.Errorf("controlnet: x %v, %d timesteps, context %v do not form one batch", x.Shape, len(t), cs)
	}
	n, h, w := x.Shape[0], x.Shape[2], x.Shape[3]
	cond, err := s.condRows(n, t[0])
	if err != nil {
		return false, err
	}
	step := s.step(t[0])
	var active []*cnUnit
	for _, u := range s.units {
		if u.active(step, s.opt.Steps, t[0]) {
			active = append(active, u)
		}
	}
	if len(active) == 0 {
		s.stats.Skipped++
		return false, nil
	}
	if s.bufs == nil || !s.bufs.fits(n, h, w) {
		if s.bufs != nil {
			s.closeBuffers()
		}
		if s.opt.GPU != nil {
			s.bufs, err = newDeviceResidualBuffers(s.opt.GPU, s.opt.UNet, n, h, w)
		} else {
			s.bufs, err = newResidualBuffers(s.opt.UNet, n, h, w)
		}
		if err != nil {
			s.bufs = nil
			return false, err
		}
	}
	written := make([]bool, n)
	wrote := false
	for _, u := range active {
		runs, err := u.runs(cond, uctx)
		if err != nil {
			return false, fmt.Errorf("controlnet %d (%s): %w", u.index, u.Path, err)
		}
		for _, r := range runs {
			if err := s.call(ctx, u, x, t, r, written); err != nil {
				return false, err
			}
			wrote = true
		}
	}
	if !wrote {
		s.stats.Skipped++
		return false, nil
	}
	start := time.Now()
	err = s.zeroUnwritten(written, 0, n)
	s.stats.HandOff += time.Since(start)
	return err == nil, err
}

// zeroUnwritten clears the rows of [r0, r1) no net wrote yet.
func (s *ControlNetSource) zeroUnwritten(written []bool, r0, r1 int) error {
	for i := r0; i < r1; i++ {
		if !written[i] {
			if err := s.bufs.zeroRows(i, i+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// call runs unit u on rows r, writing (or adding) into the buffers.
func (s *ControlNetSource) call(ctx context.Context, u *cnUnit, x *nn.Tensor, t []float32, r run, written []bool) error {
	start := time.Now()
	all, none := true, true
	for i := r.r0; i < r.r1; i++ {
		all = all && written[i]
		none = none && !written[i]
	}
	if !all && !none {
		if err := s.zeroUnwritten(written, r.r0, r.r1); err != nil {
			return err
		}
	}
	per := shapeNumel(x.Shape[1:])
	xr := nn.From(x.Data[r.r0*per:r.r1*per], r.r1-r.r0, x.Shape[1], x.Shape[2], x.Shape[3]) // [rows, C, h, w]
	// x alone when the context is on the device (staged separately).
	refs, err := s.putInputs(xr, r.ctx.host)
	if err == nil && r.ctx.dev != nil {
		var c *sdk.Tensor
		c, err = s.deviceContextRef(r.ctx.dev)
		refs = append(refs, c)
	}
	if err != nil {
		return err
	}
	outs, err := s.bufs.rowRefs(r.r0, r.r1)
	if err != nil {
		return err
	}
	hint, key, err := u.hintFor(r.r0, r.r1)
	if err != nil {
		return err
	}
	req := &sdk.ResidualsRequest{
		X: refs[0], Context: refs[1], Timesteps: t[r.r0:r.r1],
		Outputs: outs, Inputs: []*sdk.Tensor{hint},
		Params: s.params(u, key, !none, controlnet.OpResiduals),
	}
	s.stats.HandOff += time.Since(start)
	start = time.Now()
	_, err = s.plugin.Residuals(ctx, req)
	s.stats.PluginTime += time.Since(start)
	s.stats.Calls++
	if err == nil {
		err = s.checkNotRestarted()
	}
	if err != nil {
		return explainPluginOOM(fmt.Errorf("controlnet %d (%s): %w", u.index, u.Path, err), s.opt.GPU)
	}
	for i := r.r0; i < r.r1; i++ {
		written[i] = true
	}
	return nil
}

// checkNotRestarted fails the generation when the plugin process died and
// was started again since the source was made: the call after a crash may
// have reached a fresh process, but a generation whose plugin crashed is
// reported as failed (the next generation uses the new process).
func (s *ControlNetSource) checkNotRestarted() error {
	rc, ok := s.plugin.(restartCounter)
	if !ok || rc.Starts() == s.starts {
		return nil
	}
	pid := 0
	if pp, ok := s.plugin.(interface{ Pid() int }); ok {
		pid = pp.Pid()
	}
	return &PluginError{Plugin: s.plugin.Name(), Pid: pid, Op: "Residuals", Killed: true,
		Err: fmt.Errorf("%w: the plugin process exited during this generation and was restarted", ErrCrashed)}
}

// putInputs copies x and the context into the input arena, growing it when
// they do not fit.
func (s *ControlNetSource) putInputs(x, c *nn.Tensor) ([]*sdk.Tensor, error) {
	return putInputs(&s.inputs, x, c, func() { s.inputs.close() })
}
