// plugin_config.go: the list of installed third-party plugins,
// $XDG_CONFIG_HOME/sdbridge/plugins.json (default ~/.config/...):
//
//	{"plugins": [{"name": "example-scale", "path": "/abs/path/example-scale",
//	              "sha256": "<64 hex digits>", "args": []}]}
//
// and the spec of a built-in plugin (a re-exec of the sdbridge binary as
// `sdbridge plugin <name>`). It does not start anything.
package host

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
)

// InstalledPlugin is one entry of plugins.json.
type InstalledPlugin struct {
	Name   string   `json:"name"`
	Path   string   `json:"path"`
	SHA256 string   `json:"sha256"`
	Args   []string `json:"args,omitempty"`
}

type pluginConfig struct {
	Plugins []InstalledPlugin `json:"plugins"`
}

var pluginNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// PluginConfigPath is where the installed-plugin list lives.
func PluginConfigPath() (string, error) {
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("plugin config: %w", err)
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "sdbridge", "plugins.json"), nil
}

// LoadPluginConfig reads the installed plugins; a missing file is an empty
// list.
func LoadPluginConfig(path string) ([]Spec, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("plugin config: %w", err)
	}
	specs, err := ParsePluginConfig(b)
	if err != nil {
		return nil, fmt.Errorf("plugin config %s: %w", path, err)
	}
	return specs, nil
}

// ParsePluginConfig checks and converts plugins.json bytes.
func ParsePluginConfig(b []byte) ([]Spec, error) {
	var cfg pluginConfig
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("parsing: %w", err)
	}
	seen := map[string]bool{}
	var specs []Spec
	for i, p := range cfg.Plugins {
		switch {
		case !pluginNameRE.MatchString(p.Name):
			return nil, fmt.Errorf("plugin %d: bad name %q (lowercase letters, digits, . _ -)", i, p.Name)
		case seen[p.Name]:
			return nil, fmt.Errorf("plugin %q listed twice", p.Name)
		case !filepath.IsAbs(p.Path):
			return nil, fmt.Errorf("plugin %q: path %q must be absolute", p.Name, p.Path)
		}
		if sum, err := hex.DecodeString(p.SHA256); err != nil || len(sum) != 32 {
			return nil, fmt.Errorf("plugin %q: sha256 must be 64 hex digits, got %q", p.Name, p.SHA256)
		}
		seen[p.Name] = true
		specs = append(specs, Spec{Name: p.Name, Path: p.Path, Args: p.Args, SHA256: p.SHA256})
	}
	return specs, nil
}

// BuiltinSpec is the spec of built-in plugin name: this executable re-run
// as `sdbridge plugin <name>`.
func BuiltinSpec(name string) (Spec, error) {
	exe, err := os.Executable()
	if err != nil {
		return Spec{}, fmt.Errorf("built-in plugin %q: %w", name, err)
	}
	return Spec{Name: name, Path: exe, Args: []string{"plugin", name}, BuiltIn: true}, nil
}
