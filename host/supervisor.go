// supervisor.go: the plugin supervisor. It owns the private socket
// directory, the host logger and the registry of plugin specs (built-in ones
// re-exec the sdbridge binary as `sdbridge plugin <name>`; third-party ones
// are binaries checked against a sha256 from plugins.json). Plugins start
// lazily on first use (plugin.go).
//
// It does not decide which plugins a generation uses, and it never restarts
// a plugin in the background: a dead plugin is restarted on its next call.
package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// Spec says how to start one plugin.
type Spec struct {
	Name string
	Path string   // executable
	Args []string // e.g. ["plugin", "lora"] for a built-in
	Env  []string // extra KEY=VALUE
	// SHA256 (hex) of the executable. Required for third-party plugins:
	// go-plugin hashes the file before exec and refuses a mismatch.
	SHA256  string
	BuiltIn bool
}

// Options configure a Supervisor; zero values pick defaults.
type Options struct {
	LogOutput    io.Writer     // default: os.Stderr
	LogLevel     hclog.Level   // default: Warn (Debug with SDBRIDGE_DEBUG=1)
	CallTimeout  time.Duration // per call, default 2 min
	StartTimeout time.Duration // process start + handshake, default 20 s
	SocketDir    string        // parent of the private socket dir (default: os.TempDir())
}

// Supervisor starts, watches and stops plugins.
type Supervisor struct {
	log          hclog.Logger
	logOut       io.Writer
	logLevel     hclog.Level
	callTimeout  time.Duration
	startTimeout time.Duration
	dir          string

	mu      sync.Mutex
	plugins map[string]*Plugin
	closed  bool
}

// NewSupervisor creates the private socket directory (0700).
func NewSupervisor(o Options) (*Supervisor, error) {
	if o.LogOutput == nil {
		o.LogOutput = os.Stderr
	}
	if o.LogLevel == hclog.NoLevel {
		o.LogLevel = hclog.Warn
		if sdk.Debug() {
			o.LogLevel = hclog.Debug
		}
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "sdbridge", Level: o.LogLevel, Output: o.LogOutput})
	if o.CallTimeout <= 0 {
		o.CallTimeout = 2 * time.Minute
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 20 * time.Second
	}
	dir, err := os.MkdirTemp(o.SocketDir, "sdbridge-plugins-")
	if err != nil {
		return nil, fmt.Errorf("plugin socket dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("plugin socket dir: %w", err)
	}
	return &Supervisor{log: log, logOut: o.LogOutput, logLevel: o.LogLevel, callTimeout: o.CallTimeout, startTimeout: o.StartTimeout, dir: dir, plugins: map[string]*Plugin{}}, nil
}

// SocketDir is the private directory holding the plugins' sockets.
func (s *Supervisor) SocketDir() string { return s.dir }

// Register adds a plugin spec (not started until used).
func (s *Supervisor) Register(spec Spec) (*Plugin, error) {
	if spec.Name == "" || spec.Path == "" {
		return nil, fmt.Errorf("plugin spec needs a name and a path: %+v", spec)
	}
	if !spec.BuiltIn && spec.SHA256 == "" {
		return nil, fmt.Errorf("plugin %q: third-party plugins need a sha256 checksum", spec.Name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("plugin supervisor is closed")
	}
	if _, ok := s.plugins[spec.Name]; ok {
		return nil, fmt.Errorf("plugin %q registered twice", spec.Name)
	}
	p := &Plugin{sup: s, spec: spec, Timeout: s.callTimeout}
	s.plugins[spec.Name] = p
	return p, nil
}

// Get returns a registered plugin.
func (s *Supervisor) Get(name string) (*Plugin, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.plugins[name]
	if !ok {
		return nil, fmt.Errorf("no plugin %q registered", name)
	}
	return p, nil
}

// Names lists registered plugins, sorted.
func (s *Supervisor) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.plugins))
	for n := range s.plugins {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Unmap has every running plugin drop its mappings of arenas (call it
// before closing arenas, e.g. when a model is unloaded).
func (s *Supervisor) Unmap(ctx context.Context, arenas ...*Arena) error {
	s.mu.Lock()
	ps := make([]*Plugin, 0, len(s.plugins))
	for _, p := range s.plugins {
		ps = append(ps, p)
	}
	s.mu.Unlock()
	var errs []error
	for _, p := range ps {
		if err := p.Unmap(ctx, arenas...); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close stops every plugin and removes the socket directory.
func (s *Supervisor) Close() error {
	s.mu.Lock()
	s.closed = true
	ps := make([]*Plugin, 0, len(s.plugins))
	for _, p := range s.plugins {
		ps = append(ps, p)
	}
	s.mu.Unlock()
	for _, p := range ps {
		p.Stop()
	}
	return os.RemoveAll(s.dir)
}

// tail keeps the last max bytes written to it (a plugin's stderr).
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

// lines returns the last n lines.
func (t *tail) lines(n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := string(t.buf)
	end := len(s)
	for end > 0 && s[end-1] == '\n' {
		end--
	}
	start := end
	for i := 0; i < n && start > 0; i++ {
		start--
		for start > 0 && s[start-1] != '\n' {
			start--
		}
	}
	return s[start:end]
}

// pidWriter tags each log line of a plugin with its pid once known.
type pidWriter struct {
	w   io.Writer
	mu  sync.Mutex
	pid int
}

func (p *pidWriter) setPid(pid int) { p.mu.Lock(); p.pid = pid; p.mu.Unlock() }

func (p *pidWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	pid := p.pid
	p.mu.Unlock()
	if pid == 0 || len(b) == 0 || b[len(b)-1] != '\n' {
		return p.w.Write(b)
	}
	line := make([]byte, 0, len(b)+16)
	line = append(line, b[:len(b)-1]...)
	line = fmt.Appendf(line, " pid=%d\n", pid)
	if _, err := p.w.Write(line); err != nil {
		return 0, err
	}
	return len(b), nil
}
