// plugin.go: one supervised plugin. Start launches the process through
// go-plugin with the host checklist (gRPC only, VersionedPlugins, AutoMTLS,
// SecureConfig for third-party binaries, Pdeathsig, private socket dir, side
// socket as fd 3); call wraps every RPC with a deadline and turns a crash or
// a hang into a PluginError naming the plugin, its pid and its last stderr
// lines, killing the process so the next call starts a fresh one. Device
// arenas are mapped through plugin_device.go.
//
// It does not interpret hook results (plugin_hooks.go, plugin_patch.go).
package host

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/plugins/sdk/shm"
)

// stderrTailBytes is how much of a plugin's stderr is kept for reports.
const stderrTailBytes = 8 << 10

// PluginError is a failed plugin call.
type PluginError struct {
	Plugin string
	Pid    int
	Op     string
	Err    error
	Killed bool   // the plugin crashed or hung and is gone
	Stderr string // last stderr lines, for crashes and hangs
}

func (e *PluginError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "plugin %q (pid %d): %s: %v", e.Plugin, e.Pid, e.Op, e.Err)
	if e.Killed {
		b.WriteString(" (plugin stopped; it restarts on next use)")
	}
	if e.Stderr != "" {
		b.WriteString("\nlast stderr lines:\n")
		b.WriteString(e.Stderr)
	}
	return b.String()
}

func (e *PluginError) Unwrap() error { return e.Err }

// ErrCrashed wraps errors of calls during which the plugin process died.
var ErrCrashed = errors.New("plugin process crashed")

// Plugin is a supervised plugin; its process starts on first use.
type Plugin struct {
	sup  *Supervisor
	spec Spec
	// Timeout is the deadline of each call (default: the supervisor's).
	Timeout time.Duration

	mu     sync.Mutex
	inc    *incarnation
	starts int
	device string // the host's compute device, told in Describe (plugin_device.go)
}

// incarnation is one running process of a plugin.
type incarnation struct {
	client *plugin.Client
	remote *sdk.Remote
	pid    int
	side   *os.File
	stderr *tail
	stats  *sdk.WireStats

	mapMu  sync.Mutex
	mapped map[uint32]bool

	// described: Describe ran on this process; devArenas: it takes device
	// arenas (plugin_device.go).
	described bool
	devArenas bool
	descErr   error
}

// Name is the plugin's name.
func (p *Plugin) Name() string { return p.spec.Name }

// Spec is how the plugin is started.
func (p *Plugin) Spec() Spec { return p.spec }

// Starts counts process starts (restarts included).
func (p *Plugin) Starts() int { p.mu.Lock(); defer p.mu.Unlock(); return p.starts }

// Pid is the pid of the running process, or 0.
func (p *Plugin) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inc == nil {
		return 0
	}
	return p.inc.pid
}

// WireStats are the gRPC counters of the running process (nil if none).
func (p *Plugin) WireStats() *sdk.WireStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inc == nil {
		return nil
	}
	return p.inc.stats
}

// Start starts the process unless it is running.
func (p *Plugin) Start() error {
	_, err := p.running()
	return err
}

// running returns the live incarnation, starting one if needed.
func (p *Plugin) running() (*incarnation, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inc != nil && !p.inc.client.Exited() {
		return p.inc, nil
	}
	if p.inc != nil {
		p.sup.log.Warn("restarting plugin", "plugin", p.spec.Name, "old_pid", p.inc.pid)
		p.inc.stop()
		p.inc = nil
	}
	inc, err := p.start()
	if err != nil {
		return nil, err
	}
	p.inc = inc
	p.starts++
	return inc, nil
}

func (p *Plugin) start() (*incarnation, error) {
	s := p.sup
	keep, give, err := shm.SocketPair()
	if err != nil {
		return nil, fmt.Errorf("plugin %q: %w", p.spec.Name, err)
	}
	defer give.Close() // the child has its copy once started

	cmd := exec.Command(p.spec.Path, p.spec.Args...)
	// Host environment first so the plugin's own variables win (go-plugin
	// would append the host's after ours; SkipHostEnv below stops that).
	cmd.Env = append(append(os.Environ(), p.spec.Env...),
		sdk.SideFDEnv+"=3", // ExtraFiles[0]
		"PLUGIN_UNIX_SOCKET_DIR="+s.dir,
	)
	cmd.ExtraFiles = []*os.File{give}
	// Kill the plugin with the host (tied to the forking thread: never start
	// plugins from a goroutine that locked its OS thread and later exits).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	var secure *plugin.SecureConfig
	if p.spec.SHA256 != "" {
		sum, err := hex.DecodeString(p.spec.SHA256)
		if err != nil || len(sum) != sha256.Size {
			keep.Close()
			return nil, fmt.Errorf("plugin %q: bad sha256 %q", p.spec.Name, p.spec.SHA256)
		}
		secure = &plugin.SecureConfig{Checksum: sum, Hash: sha256.New()}
	}

	inc := &incarnation{side: keep, stderr: &tail{max: stderrTailBytes}, stats: &sdk.WireStats{}, mapped: map[uint32]bool{}}
	pw := &pidWriter{w: s.logOut}
	log := hclog.New(&hclog.LoggerOptions{Name: p.spec.Name, Level: s.logLevel, Output: pw})
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: sdk.HostPluginSets(),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		SkipHostEnv:      true,
		SecureConfig:     secure,
		Logger:           log,
		Stderr:           inc.stderr,
		StartTimeout:     s.startTimeout,
		GRPCDialOptions:  sdk.HostDialOptions(inc.stats, log),
	})
	inc.client = client
	remote, err := sdk.Dispense(client)
	if err != nil {
		client.Kill()
		keep.Close()
		return nil, &PluginError{Plugin: p.spec.Name, Op: "start", Err: err, Stderr: inc.stderr.lines(20)}
	}
	if rc := client.ReattachConfig(); rc != nil {
		inc.pid = rc.Pid
	}
	pw.setPid(inc.pid)
	remote.AttachSide(keep)
	inc.remote = remote
	log.Debug("plugin ready", "protocol", client.NegotiatedVersion())
	return inc, nil
}

// stop ends the process (SIGKILL first if hung) and frees its side socket.
func (inc *incarnation) stop() {
	inc.client.Kill()
	inc.side.Close()
}

// kill stops a hung or crashed process at once.
func (inc *incarnation) kill() {
	if inc.pid > 0 && !inc.client.Exited() {
		syscall.Kill(inc.pid, syscall.SIGKILL)
	}
	inc.stop()
}

// Stop stops the plugin gracefully if it runs.
func (p *Plugin) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inc == nil {
		return
	}
	if !p.inc.client.Exited() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		p.inc.remote.Shutdown(ctx)
		cancel()
	}
	p.inc.stop()
	p.inc = nil
}

// Kill stops the plugin at once (SIGKILL); the next call restarts it.
func (p *Plugin) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inc != nil {
		p.inc.kill()
		p.inc = nil
	}
}

// drop forgets inc if it is still current, after killing it.
func (p *Plugin) drop(inc *incarnation) {
	p.mu.Lock()
	if p.inc == inc {
		p.inc = nil
	}
	p.mu.Unlock()
	inc.kill()
}

// call runs fn against the running plugin with the plugin's deadline, after
// mapping the arenas of refs. A crash or hang kills the process and returns
// a PluginError with the last stderr lines.
func (p *Plugin) call(ctx context.Context, op string, refs []sdk.TensorRef, fn func(ctx context.Context, r *sdk.Remote) error) error {
	inc, err := p.running()
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	err = p.mapArenas(cctx, inc, refs)
	if err == nil {
		err = SyncForPlugin(refs) // device arenas: host writes done first
	}
	if err == nil {
		err = fn(cctx, inc.remote)
	}
	if err == nil {
		return nil
	}
	perr := &PluginError{Plugin: p.spec.Name, Pid: inc.pid, Op: op, Err: err}
	switch {
	case ctx.Err() != nil:
		// The caller gave up. A plugin still holding write grants could
		// write after the host moved on: stop it. Otherwise leave it be.
		perr.Err = ctx.Err()
		if slices.ContainsFunc(refs, func(r sdk.TensorRef) bool { return r.Writable }) {
			p.drop(inc)
			perr.Killed = true
		}
	case cctx.Err() == context.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded):
		p.drop(inc)
		perr.Err = fmt.Errorf("no answer within %v (killed): %w", p.Timeout, context.DeadlineExceeded)
		perr.Killed, perr.Stderr = true, inc.stderr.lines(20)
	case errors.Is(err, sdk.ErrUnavailable) || inc.client.Exited():
		p.drop(inc) // waits for the stderr reader, so the tail is complete
		perr.Err = fmt.Errorf("%w: %w", ErrCrashed, err)
		perr.Killed, perr.Stderr = true, inc.stderr.lines(20)
	}
	p.sup.log.Error("plugin call failed", "plugin", p.spec.Name, "pid", inc.pid, "op", op, "error", perr.Err)
	return perr
}

// mapArenas sends the arenas of refs the process has not mapped yet.
func (p *Plugin) mapArenas(ctx context.Context, inc *incarnation, refs []sdk.TensorRef) error {
	inc.mapMu.Lock()
	defer inc.mapMu.Unlock()
	for _, r := range refs {
		if inc.mapped[r.Arena] {
			continue
		}
		a, ok := lookupArena(r.Arena)
		if !ok {
			return fmt.Errorf("tensor %q: unknown arena %d", r.Name, r.Arena)
		}
		if a.OnDevice() {
			if err := p.mapDeviceArena(ctx, inc, a); err != nil {
				return fmt.Errorf("tensor %q: %w", r.Name, err)
			}
			inc.mapped[r.Arena] = true
			continue
		}
		if err := inc.remote.MapArena(ctx, a.ID, uint64(a.Size()), a.PluginWritable, a.Fd()); err != nil {
			return fmt.Errorf("mapping arena %d (%s): %w", a.ID, a.Name, err)
		}
		inc.mapped[r.Arena] = true
	}
	return nil
}

// Describe asks the plugin who it is.
func (p *Plugin) Describe(ctx context.Context) (*sdk.DescribeResponse, error) {
	var d *sdk.DescribeResponse
	err := p.call(ctx, "Describe", nil, func(ctx context.Context, r *sdk.Remote) (err error) {
		d, err = r.Describe(ctx)
		return err
	})
	return d, err
}

// Unmap asks the running process (if any) to drop its mappings of arenas,
// before the host closes them.
func (p *Plugin) Unmap(ctx context.Context, arenas ...*Arena) error {
	p.mu.Lock()
	inc := p.inc
	p.mu.Unlock()
	if inc == nil || inc.client.Exited() {
		return nil
	}
	inc.mapMu.Lock()
	defer inc.mapMu.Unlock()
	for _, a := range arenas {
		if !inc.mapped[a.ID] {
			continue
		}
		delete(inc.mapped, a.ID)
		if err := inc.remote.UnmapArena(ctx, a.ID); err != nil {
			return &PluginError{Plugin: p.spec.Name, Pid: inc.pid, Op: "UnmapArena", Err: err}
		}
	}
	return nil
}
