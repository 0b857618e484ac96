// server.go: the plugin-side gRPC shim. It implements the generated
// PluginServer by binding refs to mapped arenas and calling the plugin's
// role methods; a role the plugin lacks answers codes.Unimplemented. After
// a hook that was given device tensors it synchronises their devices before
// replying (device.go). It holds no plugin behaviour.
package sdk

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/go-hclog"
	pb "github.com/sdbridge/sdbridge/plugins/sdk/internal/pluginv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type server struct {
	pb.UnimplementedPluginServer
	impl   Describer
	arenas *arenaTable
	log    hclog.Logger
}

func newServer(impl Describer, side int, log hclog.Logger) *server {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &server{impl: impl, arenas: newArenaTable(side), log: log}
}

// toStatus turns a plugin error into a gRPC status the host can read.
func toStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrUnimplemented):
		return status.Error(codes.Unimplemented, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Unknown, err.Error())
}

func badRef(err error) error { return status.Error(codes.InvalidArgument, err.Error()) }

func unimplemented(role Capability) error {
	return status.Errorf(codes.Unimplemented, "plugin has no %s role: %v", role, ErrUnimplemented)
}

func (s *server) Describe(ctx context.Context, req *pb.DescribeRequest) (*pb.DescribeResponse, error) {
	d, err := s.impl.Describe(ctx, &DescribeRequest{Device: req.Device})
	if err != nil {
		return nil, toStatus(err)
	}
	out := *d
	if out.APIMinor == 0 {
		out.APIMinor = APIMinor
	}
	have := map[Capability]bool{}
	for _, c := range out.Capabilities {
		have[c] = true
	}
	for _, c := range capabilities(s.impl) {
		if !have[c] {
			out.Capabilities = append(out.Capabilities, c)
		}
	}
	return describeToPB(&out), nil
}

func (s *server) MapArena(_ context.Context, req *pb.MapArenaRequest) (*pb.MapArenaResponse, error) {
	var err error
	switch req.Kind {
	case pb.ArenaKind_ARENA_KIND_MEMFD:
		err = s.arenas.receive(req.Arena, req.Size, req.Writable)
	case pb.ArenaKind_ARENA_KIND_CUDA_IPC:
		err = s.arenas.receiveDevice(req.Arena, req.Size, req.Writable, req.CudaIpcHandle, int(req.CudaDevice))
	default:
		err = fmt.Errorf("arena %d: unknown arena kind %v", req.Arena, req.Kind)
	}
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	s.log.Debug("mapped arena", "arena", req.Arena, "kind", req.Kind.String(), "bytes", req.Size, "writable", req.Writable)
	return &pb.MapArenaResponse{}, nil
}

// finish synchronises the devices of a call's device tensors after the
// plugin's hook succeeded, so its device writes are complete at the reply.
func finish(err error, ts ...[]*Tensor) error {
	if err != nil {
		return toStatus(err)
	}
	if err := syncDevices(ts...); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	return nil
}

func (s *server) UnmapArena(_ context.Context, req *pb.UnmapArenaRequest) (*pb.UnmapArenaResponse, error) {
	if err := s.arenas.unmap(req.Arena); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &pb.UnmapArenaResponse{}, nil
}

func (s *server) PlanPatch(ctx context.Context, req *pb.PlanPatchRequest) (*pb.PlanPatchResponse, error) {
	wp, ok := s.impl.(WeightPatcher)
	if !ok {
		return nil, unimplemented(CapPatchWeights)
	}
	resp, err := wp.PlanPatch(ctx, &PlanPatchRequest{Model: infosFromPB(req.Model), Params: paramsFromPB(req.Params)})
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.PlanPatchResponse{Touched: resp.Touched, Warnings: resp.Warnings, ReadsOriginals: resp.ReadsOriginals}, nil
}

func (s *server) PatchWeights(ctx context.Context, req *pb.PatchWeightsRequest) (*pb.PatchWeightsResponse, error) {
	wp, ok := s.impl.(WeightPatcher)
	if !ok {
		return nil, unimplemented(CapPatchWeights)
	}
	ts, err := s.arenas.bindAll(refsFromPB(req.Tensors), true)
	if err != nil {
		return nil, badRef(err)
	}
	ins, err := s.arenas.bindAll(refsFromPB(req.Inputs), false)
	if err != nil {
		return nil, badRef(err)
	}
	resp, err := wp.PatchWeights(ctx, &PatchWeightsRequest{Tensors: ts, Inputs: ins, Params: paramsFromPB(req.Params)})
	if err := finish(err, ts); err != nil {
		return nil, err
	}
	return &pb.PatchWeightsResponse{Written: refsToPB(resp.Written)}, nil
}

func (s *server) EncodePrompt(ctx context.Context, req *pb.EncodePromptRequest) (*pb.EncodePromptResponse, error) {
	c, ok := s.impl.(Conditioner)
	if !ok {
		return nil, unimplemented(CapConditioning)
	}
	resp, err := c.EncodePrompt(ctx, &EncodePromptRequest{Text: req.Text, Params: paramsFromPB(req.Params)})
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.EncodePromptResponse{Handle: resp.Handle, ContextShape: shapeToPB(resp.ContextShape)}, nil
}

func (s *server) ReleasePrompt(ctx context.Context, req *pb.ReleasePromptRequest) (*pb.ReleasePromptResponse, error) {
	c, ok := s.impl.(Conditioner)
	if !ok {
		return nil, unimplemented(CapConditioning)
	}
	if _, err := c.ReleasePrompt(ctx, &ReleasePromptRequest{Handle: req.Handle}); err != nil {
		return nil, toStatus(err)
	}
	return &pb.ReleasePromptResponse{}, nil
}

func (s *server) Conditioning(ctx context.Context, req *pb.ConditioningRequest) (*pb.ConditioningResponse, error) {
	c, ok := s.impl.(Conditioner)
	if !ok {
		return nil, unimplemented(CapConditioning)
	}
	if req.Out == nil {
		return nil, badRef(errors.New("conditioning: no output tensor"))
	}
	out, err := s.arenas.bind(refFromPB(req.Out), true)
	if err != nil {
		return nil, badRef(err)
	}
	resp, err := c.Conditioning(ctx, &ConditioningRequest{Handle: req.Handle, Timesteps: req.Timesteps, Out: out, Params: paramsFromPB(req.Params)})
	if err := finish(err, []*Tensor{out}); err != nil {
		return nil, err
	}
	written := resp.Written
	if written.Name == "" && written.DType == "" && len(written.Shape) == 0 {
		written = out.TensorRef // the one output; plugins may leave Written empty
	}
	return &pb.ConditioningResponse{Written: refToPB(written)}, nil
}

func (s *server) Residuals(ctx context.Context, req *pb.ResidualsRequest) (*pb.ResidualsResponse, error) {
	rp, ok := s.impl.(ResidualProvider)
	if !ok {
		return nil, unimplemented(CapResiduals)
	}
	var x, cx *Tensor
	var err error
	if req.X != nil {
		if x, err = s.arenas.bind(refFromPB(req.X), false); err != nil {
			return nil, badRef(err)
		}
	}
	if req.Context != nil {
		if cx, err = s.arenas.bind(refFromPB(req.Context), false); err != nil {
			return nil, badRef(err)
		}
	}
	outs, err := s.arenas.bindAll(refsFromPB(req.Outputs), true)
	if err != nil {
		return nil, badRef(err)
	}
	ins, err := s.arenas.bindAll(refsFromPB(req.Inputs), false)
	if err != nil {
		return nil, badRef(err)
	}
	resp, err := rp.Residuals(ctx, &ResidualsRequest{X: x, Timesteps: req.Timesteps, Context: cx, Outputs: outs, Inputs: ins, Params: paramsFromPB(req.Params)})
	if err := finish(err, outs); err != nil {
		return nil, err
	}
	return &pb.ResidualsResponse{Written: refsToPB(resp.Written)}, nil
}

func (s *server) Shutdown(ctx context.Context, _ *pb.ShutdownRequest) (*pb.ShutdownResponse, error) {
	if sd, ok := s.impl.(Shutdowner); ok {
		if err := sd.Shutdown(ctx); err != nil {
			return nil, toStatus(err)
		}
	}
	s.arenas.closeAll()
	return &pb.ShutdownResponse{}, nil
}
