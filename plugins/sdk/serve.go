// serve.go: Serve, the one call in a plugin's main. It builds the plugin's
// logger (JSON on stderr, before go-plugin redirects it), finds the side
// socket, and runs go-plugin with the fixed handshake and gRPC limits. It
// does not return until the host stops the plugin.
package sdk

import (
	"fmt"
	"os"
	"strconv"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

type serveConfig struct {
	log  hclog.Logger
	side int
	test *plugin.ServeTestConfig
}

// ServeOpt configures Serve.
type ServeOpt func(*serveConfig)

// WithLogger sets the plugin's logger (default: JSON to stderr, Debug level
// with SDBRIDGE_DEBUG=1, else Info). Create it before Serve.
func WithLogger(l hclog.Logger) ServeOpt { return func(c *serveConfig) { c.log = l } }

// WithSideFD sets the side socket fd (default: from SDBRIDGE_SIDE_FD).
func WithSideFD(fd int) ServeOpt { return func(c *serveConfig) { c.side = fd } }

// NewLogger returns the logger a plugin should use: hclog JSON on stderr,
// which the host re-emits tagged with the plugin's name and pid.
func NewLogger(name string) hclog.Logger {
	level := hclog.Info
	if Debug() {
		level = hclog.Debug
	}
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: level, Output: os.Stderr, JSONFormat: true})
}

// Serve runs impl as an sdbridge plugin. It returns when the host closes
// the connection. Run by hand (without the host's cookie) it prints a
// message and exits with status 1.
func Serve(impl Describer, opts ...ServeOpt) {
	cfg := serveConfig{side: -1}
	if v := os.Getenv(SideFDEnv); v != "" {
		if fd, err := strconv.Atoi(v); err == nil {
			cfg.side = fd
		}
	}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.log == nil {
		cfg.log = NewLogger("plugin")
	}
	if impl == nil {
		fmt.Fprintln(os.Stderr, "sdk.Serve: nil plugin")
		os.Exit(1)
	}
	gp := &grpcPlugin{impl: impl, side: cfg.side, log: cfg.log}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{ProtocolVersion: {PluginName: gp}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return grpc.NewServer(append(opts, serverOptions(cfg.log)...)...)
		},
		Logger: cfg.log,
		Test:   cfg.test,
	})
	if gp.srv != nil {
		gp.srv.arenas.closeAll()
	}
}
