// handshake.go: the go-plugin glue shared by host and plugin: handshake
// config, the versioned plugin sets, the GRPCPlugin type that registers the
// server shim or builds the Remote, and Dispense (a checked type assertion).
// It does not start processes.
package sdk

import (
	"context"
	"fmt"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	pb "github.com/sdbridge/sdbridge/plugins/sdk/internal/pluginv1"
	"google.golang.org/grpc"
)

// Protocol versions. ProtocolVersion is the go-plugin app protocol version
// (= proto package sdbridge.plugin.v1); APIMinor counts additive changes.
const (
	ProtocolVersion = 1
	// APIMinor history: 1: PlanPatchResponse.ReadsOriginals; 2: device
	// arenas (MapArenaRequest.kind CUDA_IPC, capability "device_arenas")
	// and DescribeRequest.device.
	APIMinor = 2
)

// PluginName is the name the single sdbridge service is dispensed under.
const PluginName = "sdbridge"

// SideFDEnv names the environment variable carrying the side socket's fd
// number in the plugin process (the host puts it in ExtraFiles).
const SideFDEnv = "SDBRIDGE_SIDE_FD"

// Handshake is the go-plugin handshake. The cookie is a UX check ("this
// binary is a plugin"), not security; AutoMTLS and checksums are.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "SDBRIDGE_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "sd15-bridge-7f3c1e0a9b",
}

// grpcPlugin is the go-plugin Plugin for protocol v1.
type grpcPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl Describer // nil on the host side
	side int
	log  hclog.Logger
	srv  *server
}

func (g *grpcPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	if g.impl == nil {
		return fmt.Errorf("sdk: no plugin implementation to serve")
	}
	g.srv = newServer(g.impl, g.side, g.log)
	pb.RegisterPluginServer(s, g.srv)
	return nil
}

func (g *grpcPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, cc *grpc.ClientConn) (any, error) {
	return &Remote{c: pb.NewPluginClient(cc)}, nil
}

// HostPluginSets is the host's VersionedPlugins: every protocol major the
// host speaks.
func HostPluginSets() map[int]plugin.PluginSet {
	return map[int]plugin.PluginSet{ProtocolVersion: {PluginName: &grpcPlugin{}}}
}

// Dispense returns the Remote of a started go-plugin client, with an error
// naming what went wrong instead of a panicking type assertion.
func Dispense(c *plugin.Client) (*Remote, error) {
	rpc, err := c.Client()
	if err != nil {
		return nil, err
	}
	raw, err := rpc.Dispense(PluginName)
	if err != nil {
		return nil, fmt.Errorf("dispensing %q: %w", PluginName, err)
	}
	r, ok := raw.(*Remote)
	if !ok {
		return nil, fmt.Errorf("plugin served %T, not an sdbridge v%d plugin", raw, ProtocolVersion)
	}
	return r, nil
}

// InProcessPlugin is the go-plugin Plugin serving impl with side socket fd
// side, for in-process tests (package sdktest); plugins use Serve.
func InProcessPlugin(impl Describer, side int, log hclog.Logger) plugin.Plugin {
	return &grpcPlugin{impl: impl, side: side, log: log}
}
