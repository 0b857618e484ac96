// ella_schedule.go: ELLA's connector for a whole sampling schedule in one
// batched plugin call per half. Before sampling the pipeline hands the
// conditioner the U-Net timesteps its sampler will use (PrepareSchedule,
// from CFGDenoiser.ScheduleTimesteps); each half (cond, uncond) then gets
// an output [S, Q, D] for its S distinct timesteps, in a plugin-writable
// memfd arena or, with ELLAOptions.GPU, a device arena in the GPU's dtype,
// and the plugin fills it with one Conditioning call (Timesteps = the S
// timesteps, Out [S, Q, D]: the sdk's contract, nothing new on the wire).
// A step at one of those timesteps is then served without a plugin call:
// in host memory as a view of its row (flexible, fixed) or a copy of it
// before the CLIP rows (concat); on the device as a device copy, queued on
// the stream, of its row into the half's context buffer, whose address
// stays fixed. Any other timestep (a sampler evaluating between the
// schedule's sigmas, a restart) takes the per-step call of ella.go.
//
// Schedules of more than ellaScheduleChunk timesteps take several calls of
// at most that many rows each; one whose rows would pass
// ellaScheduleMaxBytes per half is not precomputed (every step is a
// per-step call, as without a schedule).
//
// It does not choose the timesteps, and a plugin restart does not lose a
// schedule (the rows live in the host's memory).
package host

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

const (
	// ellaScheduleChunk is the most timesteps one batched call carries
	// (bounds the plugin's activations; 64 covers the usual schedules).
	ellaScheduleChunk = 64
	// ellaScheduleMaxBytes bounds one half's precomputed rows.
	ellaScheduleMaxBytes = 256 << 20
)

// ellaSchedule is one half's precomputed contexts.
type ellaSchedule struct {
	index map[float32]int // timestep (IntTimesteps applied) -> row; nil until filled
	rows  int             // capacity in rows (>= the timesteps in index)

	// Host memory: the rows in a plugin-writable memfd arena.
	arena *Arena
	buf   []float32    // [rows, Q, D]
	views []*nn.Tensor // [1, Q, D] each, over buf

	// Device memory (ELLAOptions.GPU): the rows in the GPU's dtype.
	dev  *cuda.Buffer // [rows, Q, D]
	devA *Arena
}

// PrepareSchedule computes the contexts of the cond half (and of the
// uncond half when uncond is set) at every timestep of ts in one batched
// plugin call per half; Context and ContextGPU then serve those timesteps
// without calling the plugin. ts are U-Net timesteps exactly as Context
// will get them (IntTimesteps is applied here too); repeats are dropped.
// It replaces an earlier schedule. A failed call leaves the half without
// a schedule (its steps then call the plugin) and returns the error.
func (e *ELLAConditioner) PrepareSchedule(ctx context.Context, ts []float32, uncond bool) error {
	ts = e.scheduleTimes(ts)
	for i, h := range e.halves {
		if h == nil {
			return errors.New("ella: conditioner is closed")
		}
		if i == 0 && !uncond {
			continue
		}
		if err := e.prepareHalf(ctx, h, ts); err != nil {
			what := "negative prompt"
			if i == 1 {
				what = "prompt"
			}
			return fmt.Errorf("ella: schedule of %d timesteps (%s): %w", len(ts), what, err)
		}
	}
	return nil
}

// scheduleTimes is ts as step() will look them up: truncated with
// IntTimesteps, without repeats or non-finite values, in order.
func (e *ELLAConditioner) scheduleTimes(ts []float32) []float32 {
	seen := make(map[float32]bool, len(ts))
	var out []float32 // [S]
	for _, t := range ts {
		if e.opt.IntTimesteps {
			t = float32(math.Trunc(float64(t)))
		}
		if math.IsNaN(float64(t)) || math.IsInf(float64(t), 0) || seen[t] {
			continue
		}
		seen[t] = true
		out = append(out, t)
	}
	return out
}

// prepareHalf gives h a schedule of ts (reusing its buffer when it fits)
// and has the plugin fill it.
func (e *ELLAConditioner) prepareHalf(ctx context.Context, h *ellaHalf, ts []float32) error {
	running := e.pluginRunning()
	q, d := h.shape[1], h.shape[2]
	es := 4
	if e.opt.GPU != nil {
		es = e.opt.GPU.DType.Size()
	}
	if len(ts) == 0 || len(ts)*q*d*es > ellaScheduleMaxBytes {
		return e.closeSchedule(h, running)
	}
	if h.sched != nil && h.sched.rows < len(ts) {
		if err := e.closeSchedule(h, running); err != nil {
			return err
		}
	}
	if h.sched == nil {
		s, err := e.newSchedule(h, len(ts))
		if err != nil {
			return err
		}
		h.sched = s
	}
	s := h.sched
	s.index = nil
	if h.valid && h.gpu == nil && h.clip == nil && h.out != h.view {
		h.valid = false // h.out may be a row about to be overwritten
	}
	for at := 0; at < len(ts); at += ellaScheduleChunk {
		part := ts[at:min(at+ellaScheduleChunk, len(ts))]
		ref, err := s.ref(h, at, len(part), e.opt.GPU)
		if err != nil {
			return err
		}
		if err := e.callPlugin(ctx, h, part, ref, true); err != nil {
			return err
		}
	}
	s.index = make(map[float32]int, len(ts))
	for i, t := range ts {
		s.index[t] = i
	}
	return nil
}

// newSchedule allocates rows contexts [rows, Q, D] for h: host memory, or
// device memory with ELLAOptions.GPU.
func (e *ELLAConditioner) newSchedule(h *ellaHalf, rows int) (*ellaSchedule, error) {
	q, d := h.shape[1], h.shape[2]
	n := q * d
	s := &ellaSchedule{rows: rows}
	if g := e.opt.GPU; g != nil {
		buf, err := g.Dev.Alloc(rows * n * g.DType.Size()) // [rows, Q, D]
		if err != nil {
			return nil, fmt.Errorf("device schedule buffer of %d rows: %w", rows, err)
		}
		a, err := NewDeviceArena("ella-schedule", buf, true)
		if err != nil {
			buf.Free()
			return nil, err
		}
		s.dev, s.devA = buf, a
		return s, nil
	}
	a, err := NewArena("ella-schedule", 4*rows*n+arenaAlign, true)
	if err != nil {
		return nil, err
	}
	if s.buf = a.AllocFloat32(rows * n); s.buf == nil { // [rows, Q, D]
		a.Close()
		return nil, fmt.Errorf("schedule arena full (%d rows of %v)", rows, h.shape)
	}
	s.arena = a
	s.views = make([]*nn.Tensor, rows)
	for i := range s.views {
		s.views[i] = nn.From(s.buf[i*n:(i+1)*n], 1, q, d) // [1, Q, D] row i
	}
	return s, nil
}

// ref is the plugin-writable output [k, Q, D] of rows at..at+k.
func (s *ellaSchedule) ref(h *ellaHalf, at, k int, g *nn.GPU) (sdk.TensorRef, error) {
	q, d := h.shape[1], h.shape[2]
	n := q * d
	name := h.ref.Name + ".schedule"
	shape := []int{k, q, d}
	if s.dev == nil {
		return RefOf(name, s.buf[at*n:(at+k)*n], shape, true) // [k, Q, D]
	}
	es := g.DType.Size()
	part, err := s.dev.Slice(at*n*es, k*n*es) // [k, Q, D]
	if err != nil {
		return sdk.TensorRef{}, err
	}
	dt := sdk.F32
	if g.DType == nn.GPUF16 {
		dt = sdk.F16
	}
	return DeviceRefOf(name, part, dt, shape, true)
}

// fromSchedule serves h's context at t from its schedule; ok is false
// when t is not in it (the caller asks the plugin).
func (e *ELLAConditioner) fromSchedule(h *ellaHalf, t float32) (ok bool, err error) {
	if h.sched == nil {
		return false, nil
	}
	i, ok := h.sched.index[t]
	if !ok {
		return false, nil
	}
	s := h.sched
	if s.dev != nil {
		n := h.shape[1] * h.shape[2] * e.opt.GPU.DType.Size()
		row, err := s.dev.Slice(i*n, n) // [1, Q, D]
		if err != nil {
			return false, err
		}
		// Queued on the stream, before the U-Net reads the context; the
		// plain copy where the driver lacks the async entry point.
		if err := h.dev.CopyFromAsync(row, n); err != nil {
			if err := h.dev.CopyFrom(row, n); err != nil {
				return false, fmt.Errorf("copying schedule row %d (t=%v) into the context: %w", i, t, err)
			}
		}
	} else if h.clip != nil {
		copy(h.out.Data, s.views[i].Data) // [1, Q, D] before the CLIP tokens
	} else {
		h.out = s.views[i] // [1, Q, D]
	}
	e.stats.Scheduled++
	return true, nil
}

// pluginRunning reports whether the plugin process is up (true when the
// plugin does not say).
func (e *ELLAConditioner) pluginRunning() bool {
	if pp, ok := e.plugin.(interface{ Pid() int }); ok {
		return pp.Pid() != 0
	}
	return true
}

// closeSchedule drops h's schedule: its arena is unmapped from the plugin
// (if it runs) before it is closed and its memory freed.
func (e *ELLAConditioner) closeSchedule(h *ellaHalf, running bool) error {
	s := h.sched
	if s == nil {
		return nil
	}
	h.sched = nil
	if h.valid && h.gpu == nil && h.clip == nil && h.out != h.view {
		h.valid, h.out = false, h.view // h.out was a row of s
	}
	a := s.arena
	if s.devA != nil {
		a = s.devA
	}
	var errs []error
	if u, ok := e.plugin.(arenaUnmapper); ok && running {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		errs = append(errs, u.Unmap(ctx, a))
		cancel()
	}
	errs = append(errs, a.Close())
	if s.dev != nil {
		errs = append(errs, s.dev.Free())
	}
	return errors.Join(errs...)
}
