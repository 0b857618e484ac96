// client.go: the host-side gRPC shim. Remote calls a plugin with SDK types
// and hands arena fds over the side socket before announcing them (device
// arenas travel as CUDA IPC handles in the request instead). It does
// not supervise the process (host/supervisor.go) or check the refs a plugin
// returns against the host's grants (host/refs.go).
package sdk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/sdbridge/sdbridge/cuda"
	pb "github.com/sdbridge/sdbridge/plugins/sdk/internal/pluginv1"
	"github.com/sdbridge/sdbridge/plugins/sdk/shm"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Remote is a connected plugin as the host sees it.
type Remote struct {
	c pb.PluginClient

	sideMu sync.Mutex
	side   *os.File
}

// AttachSide sets the host end of the side socket used by MapArena.
func (r *Remote) AttachSide(f *os.File) {
	r.sideMu.Lock()
	r.side = f
	r.sideMu.Unlock()
}

// fromStatus keeps gRPC codes meaningful to callers: Unimplemented wraps
// ErrUnimplemented, DeadlineExceeded wraps context.DeadlineExceeded.
func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Unimplemented:
		return fmt.Errorf("%s: %w", st.Message(), ErrUnimplemented)
	case codes.DeadlineExceeded:
		return fmt.Errorf("%s: %w", st.Message(), context.DeadlineExceeded)
	case codes.Canceled:
		return fmt.Errorf("%s: %w", st.Message(), context.Canceled)
	case codes.Unavailable:
		return fmt.Errorf("plugin unreachable (%s): %w", st.Message(), ErrUnavailable)
	}
	return errors.New(st.Message())
}

// ErrUnavailable wraps errors where the plugin process could not be reached
// (crashed, killed, exited).
var ErrUnavailable = errors.New("plugin unavailable")

// Describe asks the plugin for its name, version, capabilities, parameters.
func (r *Remote) Describe(ctx context.Context) (*DescribeResponse, error) {
	return r.DescribeFor(ctx, &DescribeRequest{})
}

// DescribeFor is Describe telling the plugin the host's device (minor 2).
func (r *Remote) DescribeFor(ctx context.Context, req *DescribeRequest) (*DescribeResponse, error) {
	resp, err := r.c.Describe(ctx, &pb.DescribeRequest{Device: req.Device})
	if err != nil {
		return nil, fromStatus(err)
	}
	return describeFromPB(resp), nil
}

// MapArena sends fd (a sealed memfd of size bytes) on the side socket and
// asks the plugin to map it as arena id.
func (r *Remote) MapArena(ctx context.Context, id uint32, size uint64, writable bool, fd int) error {
	r.sideMu.Lock()
	defer r.sideMu.Unlock()
	if r.side == nil {
		return errors.New("no side socket attached")
	}
	if err := shm.Send(int(r.side.Fd()), shm.Header{ID: id, Size: size, Writable: writable}, fd); err != nil {
		return err
	}
	_, err := r.c.MapArena(ctx, &pb.MapArenaRequest{Arena: id, Size: size, Writable: writable})
	return fromStatus(err)
}

// MapDeviceArena asks the plugin to open device arena id (minor 2): size
// bytes of one cuMemAlloc allocation on device ordinal, exported as handle.
// Nothing goes on the side socket. Send it only to a plugin whose Describe
// reported APIMinor >= 2 and CapDeviceArenas (an older plugin would wait
// for an fd).
func (r *Remote) MapDeviceArena(ctx context.Context, id uint32, size uint64, writable bool, handle cuda.IPCHandle, ordinal int) error {
	_, err := r.c.MapArena(ctx, &pb.MapArenaRequest{Arena: id, Size: size, Writable: writable,
		Kind: pb.ArenaKind_ARENA_KIND_CUDA_IPC, CudaIpcHandle: handle.Reserved[:], CudaDevice: int32(ordinal)})
	return fromStatus(err)
}

// UnmapArena asks the plugin to drop arena id.
func (r *Remote) UnmapArena(ctx context.Context, id uint32) error {
	_, err := r.c.UnmapArena(ctx, &pb.UnmapArenaRequest{Arena: id})
	return fromStatus(err)
}

// PlanPatch asks which tensors a patch would write.
func (r *Remote) PlanPatch(ctx context.Context, req *PlanPatchRequest) (*PlanPatchResponse, error) {
	resp, err := r.c.PlanPatch(ctx, &pb.PlanPatchRequest{Model: infosToPB(req.Model), Params: paramsToPB(req.Params)})
	if err != nil {
		return nil, fromStatus(err)
	}
	return &PlanPatchResponse{Touched: resp.Touched, Warnings: resp.Warnings, ReadsOriginals: resp.ReadsOriginals}, nil
}

// PatchWeights asks the plugin to patch the granted tensors in place.
func (r *Remote) PatchWeights(ctx context.Context, req *PatchWeightsRequest) (*PatchWeightsResponse, error) {
	resp, err := r.c.PatchWeights(ctx, &pb.PatchWeightsRequest{Tensors: tensorsToPB(req.Tensors), Inputs: tensorsToPB(req.Inputs), Params: paramsToPB(req.Params)})
	if err != nil {
		return nil, fromStatus(err)
	}
	return &PatchWeightsResponse{Written: refsFromPB(resp.Written)}, nil
}

// EncodePrompt asks a conditioner to prepare a prompt.
func (r *Remote) EncodePrompt(ctx context.Context, req *EncodePromptRequest) (*EncodePromptResponse, error) {
	resp, err := r.c.EncodePrompt(ctx, &pb.EncodePromptRequest{Text: req.Text, Params: paramsToPB(req.Params)})
	if err != nil {
		return nil, fromStatus(err)
	}
	return &EncodePromptResponse{Handle: resp.Handle, ContextShape: shapeFromPB(resp.ContextShape)}, nil
}

// ReleasePrompt forgets a handle.
func (r *Remote) ReleasePrompt(ctx context.Context, req *ReleasePromptRequest) (*ReleasePromptResponse, error) {
	if _, err := r.c.ReleasePrompt(ctx, &pb.ReleasePromptRequest{Handle: req.Handle}); err != nil {
		return nil, fromStatus(err)
	}
	return &ReleasePromptResponse{}, nil
}

// Conditioning asks for one step's context, written into req.Out.
func (r *Remote) Conditioning(ctx context.Context, req *ConditioningRequest) (*ConditioningResponse, error) {
	resp, err := r.c.Conditioning(ctx, &pb.ConditioningRequest{Handle: req.Handle, Timesteps: req.Timesteps, Out: tensorToPB(req.Out), Params: paramsToPB(req.Params)})
	if err != nil {
		return nil, fromStatus(err)
	}
	return &ConditioningResponse{Written: refFromPB(resp.Written)}, nil
}

// Residuals asks for one step's residuals, written into req.Outputs.
func (r *Remote) Residuals(ctx context.Context, req *ResidualsRequest) (*ResidualsResponse, error) {
	resp, err := r.c.Residuals(ctx, &pb.ResidualsRequest{X: tensorToPB(req.X), Timesteps: req.Timesteps, Context: tensorToPB(req.Context), Outputs: tensorsToPB(req.Outputs), Inputs: tensorsToPB(req.Inputs), Params: paramsToPB(req.Params)})
	if err != nil {
		return nil, fromStatus(err)
	}
	return &ResidualsResponse{Written: refsFromPB(resp.Written)}, nil
}

// Shutdown asks the plugin to release its resources.
func (r *Remote) Shutdown(ctx context.Context) error {
	_, err := r.c.Shutdown(ctx, &pb.ShutdownRequest{})
	return fromStatus(err)
}
