// graph.go: CUDA graphs by stream capture. Device.Capture runs a closure
// whose work goes to the device's stream while the stream is capturing
// (cuStreamBeginCapture_v2, thread-local mode: every call of the device
// runs on its one thread), and turns what it queued (kernel launches,
// cuBLAS/cuBLASLt calls, async copies and memsets, event records) into an
// instantiated Graph; Graph.Launch replays it with one driver call.
//
// Capture fails, with an error that says so, when the closure makes a call
// that cannot be captured: synchronous copies and Buffer.Upload/Download
// (they synchronise the stream), Device.Synchronize, Event.Synchronize,
// Device.Alloc/Free, arena growth, Stager uploads. The driver reports those
// as CUDA_ERROR_STREAM_CAPTURE_* and invalidates the capture; this
// package's own calls refuse earlier (ErrCapturing). Pointers and scalar
// kernel arguments are baked into the graph: every buffer the closure
// touches must outlive the Graph, and values that change between replays
// (a timestep, a guidance scale) must be read by the kernels from device
// memory, not passed as launch arguments.
//
// Recipe for a forward pass with arena scratch: give the pass its own
// Arena; run it once uncaptured (the arena grows to its peak), Reset, run
// it again and check Stats().Grows did not change, Reset, then Capture the
// same pass (the arena hands out the same addresses without growing);
// inputs and outputs live in buffers outside that arena, refreshed with
// async copies before each Launch. Do not Reset or allocate from that
// arena while the Graph lives. It does not update graphs in place
// (cuGraphExecUpdate), nor capture across several streams.
//
// cuBLAS and cuBLASLt under capture (to check on a real GPU; NVIDIA's
// cuBLAS documentation, "CUDA Graphs support" and cublasSetWorkspace):
// cuBLAS calls can be captured; in host pointer mode (the only mode this
// package uses) alpha and beta are copied into the graph at capture, so a
// replay uses the captured values. Routines that return a result to host
// memory synchronise and cannot be captured (none is bound here). Without
// a user workspace cuBLAS takes its workspace from its own pool, and from
// CUDA 12.2 on may allocate it stream-ordered (cudaMallocAsync), which a
// capture turns into memory nodes: not allowed in child graphs or graphs
// launched from the device, and a growing footprint when the same handle
// is captured many times. So give each handle that is captured a fixed
// device workspace with cublasSetWorkspace before the capture
// (BLAS.FixWorkspace: 32 MiB on sm_90 and newer, 4 MiB before, as NVIDIA
// recommends; it must be 256-byte aligned, and cublasSetStream resets it,
// so set it after the stream); the workspace must outlive every graph that
// captured it, and graphs captured from one handle must not replay
// concurrently on different streams (they share the workspace).
// NewBLAS registers every handle with BLAS.FixOnCapture: every later
// Capture on its device fixes its workspace first, before the stream
// starts capturing (Device.BeforeCapture is the general hook; a cuBLAS
// without cublasSetWorkspace_v2 keeps its own workspace, as before);
// UNetCUDA's graph build also calls FixWorkspace itself. cuBLASLt takes its workspace
// per call: Lt passes one fixed buffer allocated at NewLt (or none), as
// capture needs. The stand-in cuBLAS/cuBLASLt record GEMMs into the
// capture and replay them (cudatest/fake/README.md), and accept the
// workspace without using it: that it suffices on a GPU is unchecked.
package cuda

import (
	"errors"
	"fmt"
	"slices"
	"sync"
)

// ErrCapturing is returned by calls that cannot run while the device's
// stream is being captured into a graph.
var ErrCapturing = errors.New("cuda: not allowed while the device stream is captured into a graph")

// Stream capture modes and statuses (cuda.h).
const (
	captureModeThreadLocal = 1 // CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
	captureStatusNone      = 0 // CU_STREAM_CAPTURE_STATUS_NONE
)

// Driver codes of failed captures (CUDA_ERROR_STREAM_CAPTURE_*).
const (
	errCaptureUnsupported = 900
	errCaptureWrongThread = 908
)

// captures holds the devices whose stream is being captured.
var captures sync.Map // *Device -> struct{}

// capturing reports whether d's stream is being captured by Capture.
func (d *Device) capturing() bool {
	_, ok := captures.Load(d)
	return ok
}

// notCapturing returns an error naming op when d is capturing.
func (d *Device) notCapturing(op string) error {
	if d.capturing() {
		return fmt.Errorf("%w: %s (do it before Capture, or use async copies and pre-reserved arena memory)", ErrCapturing, op)
	}
	return nil
}

// Graph is an instantiated CUDA graph of work captured on a device.
type Graph struct {
	dev  *Device
	g    uintptr // CUgraph
	exec uintptr // CUgraphExec
}

var graphSyms = []string{"cuStreamBeginCapture_v2", "cuStreamEndCapture", "cuStreamIsCapturing",
	"cuGraphInstantiateWithFlags", "cuGraphLaunch", "cuGraphExecDestroy", "cuGraphDestroy"}

// captureHooks holds, per device, what Capture runs before the stream
// starts capturing (BeforeCapture).
var captureHooks sync.Map // *Device -> *hookList

// hookList is one device's BeforeCapture functions, by registration.
type hookList struct {
	mu   sync.Mutex
	next int
	fns  map[int]func() error
}

// BeforeCapture registers fn to run at the start of every later Capture
// on d, on the caller's goroutine before the stream begins capturing (so
// it may allocate and synchronise), in registration order; a failing fn
// fails that Capture. remove unregisters it (call it before whatever fn
// uses is freed); removing twice is a no-op.
func (d *Device) BeforeCapture(fn func() error) (remove func()) {
	v, _ := captureHooks.LoadOrStore(d, &hookList{fns: map[int]func() error{}})
	l := v.(*hookList)
	l.mu.Lock()
	id := l.next
	l.next++
	l.fns[id] = fn
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		delete(l.fns, id)
		l.mu.Unlock()
	}
}

// runCaptureHooks runs d's BeforeCapture functions.
func (d *Device) runCaptureHooks() error {
	v, ok := captureHooks.Load(d)
	if !ok {
		return nil
	}
	l := v.(*hookList)
	l.mu.Lock()
	ids := make([]int, 0, len(l.fns))
	for id := range l.fns {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	fns := make([]func() error, len(ids))
	for i, id := range ids {
		fns[i] = l.fns[id]
	}
	l.mu.Unlock()
	for _, fn := range fns {
		if err := fn(); err != nil {
			return fmt.Errorf("cuda: before graph capture: %w", err)
		}
	}
	return nil
}

// FixOnCapture makes bl safe to capture by default: every later Capture
// on bl's device first gives it its fixed workspace (FixWorkspace, once;
// without cublasSetWorkspace_v2 cuBLAS keeps its own and the capture goes
// on). NewBLAS registers each handle and Close removes it; a handle
// built otherwise can register itself. Call remove before bl.Close.
func (bl *BLAS) FixOnCapture() (remove func()) {
	return bl.dev.BeforeCapture(func() error {
		if err := bl.FixWorkspace(); err != nil && !errors.Is(err, ErrMissingSymbol) {
			return fmt.Errorf("cuBLAS workspace: %w", err)
		}
		return nil
	})
}

// Capture records the work fn queues on d's stream into a Graph, without
// running it. fn is called on the caller's goroutine and uses the ordinary
// API (Function.Launch, BLAS, Lt, async copies); it must not call
// anything synchronous (see the file comment). Other goroutines must not
// use d while Capture runs: their work would join the graph or break it.
// If fn fails, or made a call that broke the capture, Capture returns the
// reason and no graph. The BeforeCapture functions of d (FixOnCapture's
// cuBLAS workspaces) run first.
func (d *Device) Capture(fn func() error) (*Graph, error) {
	if err := need(d.api, graphSyms...); err != nil {
		return nil, err
	}
	if d.capturing() {
		return nil, fmt.Errorf("%w: nested Capture", ErrCapturing)
	}
	if err := d.runCaptureHooks(); err != nil {
		return nil, err
	}
	if _, loaded := captures.LoadOrStore(d, struct{}{}); loaded {
		return nil, fmt.Errorf("%w: nested Capture", ErrCapturing)
	}
	err := d.Do(func() error {
		return check("cuStreamBeginCapture", d.api.cuStreamBeginCapture(d.stream, captureModeThreadLocal))
	})
	if err != nil {
		captures.Delete(d)
		return nil, fmt.Errorf("cuda: graph capture: %w", err)
	}
	var g uintptr
	var status int32
	end := func() error {
		defer captures.Delete(d)
		return d.Do(func() error {
			// A broken capture may already have ended; end it only if active.
			if e := check("cuStreamIsCapturing", d.api.cuStreamIsCapturing(d.stream, &status)); e != nil {
				return e
			}
			if status == captureStatusNone {
				return nil
			}
			return check("cuStreamEndCapture", d.api.cuStreamEndCapture(d.stream, &g))
		})
	}
	ended := false
	defer func() {
		if !ended { // fn panicked: end the capture so the device stays usable
			if end() == nil && g != 0 {
				_ = d.Do(func() error { return check("cuGraphDestroy", d.api.cuGraphDestroy(g)) })
			}
		}
	}()
	fnErr := fn()
	ended = true
	endErr := end()
	if fnErr != nil || endErr != nil || g == 0 {
		if g != 0 {
			_ = d.Do(func() error { return check("cuGraphDestroy", d.api.cuGraphDestroy(g)) })
		}
		return nil, captureError(fnErr, endErr, status)
	}
	gr := &Graph{dev: d, g: g}
	err = d.Do(func() error {
		return check("cuGraphInstantiateWithFlags", d.api.cuGraphInstantiateWithFlags(&gr.exec, g, 0))
	})
	if err != nil {
		_ = d.Do(func() error { return check("cuGraphDestroy", d.api.cuGraphDestroy(g)) })
		return nil, fmt.Errorf("cuda: graph capture: %w", err)
	}
	return gr, nil
}

// captureError explains why a capture produced no graph.
func captureError(fnErr, endErr error, status int32) error {
	var de *Error
	switch {
	case fnErr != nil && errors.As(fnErr, &de) && de.Code >= errCaptureUnsupported && de.Code <= errCaptureWrongThread:
		return fmt.Errorf("cuda: graph capture: a call that cannot be captured (synchronous copy, Synchronize, Alloc or Free?) broke it: %w", fnErr)
	case fnErr != nil:
		return fmt.Errorf("cuda: graph capture: the captured function failed: %w", errors.Join(fnErr, endErr))
	case endErr != nil:
		return fmt.Errorf("cuda: graph capture was invalidated by a call that cannot be captured: %w", endErr)
	case status == captureStatusNone:
		return errors.New("cuda: graph capture ended before the captured function returned (a call that cannot be captured ended it)")
	default:
		return errors.New("cuda: graph capture returned no graph")
	}
}

// Launch queues one replay of the graph on the device's stream.
func (g *Graph) Launch() error {
	if g == nil || g.exec == 0 {
		return errors.New("cuda: Launch of a closed graph")
	}
	d := g.dev
	return d.Do(func() error { return check("cuGraphLaunch", d.api.cuGraphLaunch(g.exec, d.stream)) })
}

// Close destroys the graph (after queued replays finish: the stream is
// synchronised first). Closing twice is a no-op.
func (g *Graph) Close() error {
	if g == nil || g.exec == 0 {
		return nil
	}
	d := g.dev
	exec, gr := g.exec, g.g
	g.exec, g.g = 0, 0
	return d.Do(func() error {
		return errors.Join(
			check("cuStreamSynchronize", d.api.cuStreamSynchronize(d.stream)),
			check("cuGraphExecDestroy", d.api.cuGraphExecDestroy(exec)),
			check("cuGraphDestroy", d.api.cuGraphDestroy(gr)))
	})
}
