// wire.go: cross-cutting gRPC settings of both sides: the explicit message
// size limit, a debug log of message sizes (SDBRIDGE_DEBUG=1), and byte
// counters a host can read to prove no tensor data crossed gRPC. It does not
// define RPCs.
package sdk

import (
	"context"
	"os"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// MaxMessageSize caps every gRPC message in both directions. Messages carry
// descriptors only (tensor names, arena ids, offsets, shapes, parameters):
// the largest, a PlanPatch listing ~1,200 model tensors, is ~100 KiB. Tensor
// bytes go through shared arenas, so a message near this limit is a bug; do
// not raise it to push data (use an arena).
const MaxMessageSize = 4 << 20

// Debug reports whether SDBRIDGE_DEBUG=1 (log every message size).
func Debug() bool { return os.Getenv("SDBRIDGE_DEBUG") == "1" }

// WireStats counts messages and bytes of one connection.
type WireStats struct {
	Calls, SentBytes, RecvBytes atomic.Int64
}

func sizeOf(m any) int {
	if pm, ok := m.(proto.Message); ok {
		return proto.Size(pm)
	}
	return 0
}

// HostDialOptions are the gRPC options of a host connection: message limits,
// byte counting into stats (may be nil), and a debug size log.
func HostDialOptions(stats *WireStats, log hclog.Logger) []grpc.DialOption {
	debug := Debug()
	icpt := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		sent, recv := sizeOf(req), sizeOf(reply)
		if stats != nil {
			stats.Calls.Add(1)
			stats.SentBytes.Add(int64(sent))
			stats.RecvBytes.Add(int64(recv))
		}
		if debug && log != nil {
			log.Debug("grpc call", "method", method, "request_bytes", sent, "response_bytes", recv, "error", err)
		}
		return err
	}
	return []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize), grpc.MaxCallSendMsgSize(MaxMessageSize)),
		grpc.WithUnaryInterceptor(icpt),
	}
}

// serverOptions are the plugin server's gRPC options.
func serverOptions(log hclog.Logger) []grpc.ServerOption {
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageSize), grpc.MaxSendMsgSize(MaxMessageSize)}
	if Debug() && log != nil {
		opts = append(opts, grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			resp, err := handler(ctx, req)
			log.Debug("grpc serve", "method", info.FullMethod, "request_bytes", sizeOf(req), "response_bytes", sizeOf(resp), "error", err)
			return resp, err
		}))
	}
	return opts
}
