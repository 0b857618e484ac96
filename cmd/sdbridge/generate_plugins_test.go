// generate_plugins_test.go: `generate --plugin` end to end with a real
// third-party plugin process: plugins/example-scale built into a temp dir,
// installed through a temp XDG_CONFIG_HOME plugins.json with its sha256,
// run on the demo's tiny models; and the refusals (not installed, wrong
// sha256, unknown parameter, bad type, built-in name). Building the plugin
// needs the go tool; the end-to-end tests are skipped with -short.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

func TestPluginFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    []host.PluginUse
		wantErr string
	}{
		{"none", nil, nil, ""},
		{"bare name", []string{"--plugin", "example-scale"}, []host.PluginUse{{Name: "example-scale"}}, ""},
		{"params", []string{"--plugin", "example-scale:tensor=a.b,factor=1.5", "--plugin", "other:x=1,x=2"}, []host.PluginUse{
			{Name: "example-scale", Params: sdk.Params{{Name: "tensor", Value: "a.b"}, {Name: "factor", Value: "1.5"}}},
			{Name: "other", Params: sdk.Params{{Name: "x", Value: "1"}, {Name: "x", Value: "2"}}},
		}, ""},
		{"built-in lora", []string{"--plugin", "lora:x=1"}, nil, `"lora" is a built-in plugin: use --lora`},
		{"built-in controlnet", []string{"--plugin", "controlnet"}, nil, "use --controlnet"},
		{"built-in ella", []string{"--plugin", "ella"}, nil, "use --ella"},
		{"not key=value", []string{"--plugin", "example-scale:factor"}, nil, `parameter "factor" is not key=value`},
		{"bad name", []string{"--plugin", "Bad Name"}, nil, "bad name"},
		{"twice", []string{"--plugin", "a", "--plugin", "a:x=1"}, nil, `plugin "a" given twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("generate", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			o := pluginFlags(fs)
			err := fs.Parse(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, o.uses); diff != "" {
				t.Errorf("uses (-want +got):\n%s", diff)
			}
			if o.enabled() != (len(tt.want) > 0) {
				t.Errorf("enabled() = %v", o.enabled())
			}
		})
	}
}

// buildExampleScale builds plugins/example-scale into a temp dir and
// returns the binary and its sha256.
func buildExampleScale(t *testing.T) (path, sum string) {
	t.Helper()
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		if goTool, err = exec.LookPath("go"); err != nil {
			t.Skip("go tool not found: cannot build plugins/example-scale")
		}
	}
	path = filepath.Join(t.TempDir(), "example-scale")
	cmd := exec.Command(goTool, "build", "-o", path, "../../plugins/example-scale")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building example-scale: %v\n%s", err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return path, hex.EncodeToString(s[:])
}

// installPlugins writes a plugins.json listing entries under a fresh
// XDG_CONFIG_HOME.
func installPlugins(t *testing.T, entries ...host.InstalledPlugin) {
	t.Helper()
	dir := t.TempDir()
	b, err := json.Marshal(map[string]any{"plugins": entries})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "sdbridge"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sdbridge", "plugins.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("XDG_CONFIG_HOME", dir)
}

// outConv is the tiny U-Net's output convolution: scaling it by 0 leaves
// only its bias, so the predicted noise (and the image) change.
const outConv = "model.diffusion_model.out.2.weight"

func TestGenerateThirdPartyPlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts a plugin process")
	}
	exe, sum := buildExampleScale(t)
	installPlugins(t, host.InstalledPlugin{Name: "example-scale", Path: exe, SHA256: sum})
	demo, err := writeDemoModels(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"--model", demo.Checkpoint, "--clip-tokenizer", demo.Dir, "--prompt", "a red cube"}
	plain, _ := generatePNG(t, nil, base...)
	one, params1 := generatePNG(t, nil, append(base, "--plugin", "example-scale:tensor="+outConv+",factor=1")...)
	zero, params0 := generatePNG(t, nil, append(base, "--plugin", "example-scale:tensor="+outConv+",factor=0")...)
	if !bytes.Equal(plain, one) {
		t.Error("factor=1 changed the image (want bit-identical to the run without the plugin)")
	}
	if bytes.Equal(plain, zero) {
		t.Error("factor=0 on the U-Net's output conv changed no pixel")
	}
	for params, want := range map[string]string{
		params1: `Plugins: "example-scale(tensor=` + outConv + `,factor=1)"`,
		params0: `Plugins: "example-scale(tensor=` + outConv + `,factor=0)"`,
	} {
		if !strings.Contains(params, want) {
			t.Errorf("parameters lack %q:\n%s", want, params)
		}
	}
}

// TestGenerateThirdPartyPluginAfterLoRA patches a tensor the LoRA patched
// too: factor 1 leaves the LoRA image bit-identical, factor 0 changes it.
func TestGenerateThirdPartyPluginAfterLoRA(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts plugin processes")
	}
	exe, sum := buildExampleScale(t)
	installPlugins(t, host.InstalledPlugin{Name: "example-scale", Path: exe, SHA256: sum})
	demo, err := writeDemoModels(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var attn string // the first U-Net attention projection: the demo LoRA patches it
	for _, s := range models.Tiny(demo.VocabSize).Specs(safetensors.F16) {
		if strings.HasPrefix(s.Name, "model.diffusion_model.") && strings.HasSuffix(s.Name, ".attn2.to_v.weight") {
			attn = s.Name
			break
		}
	}
	if attn == "" {
		t.Fatal("tiny layout has no attn2.to_v")
	}
	sup := testPlugins(t)
	base := []string{"--model", demo.Checkpoint, "--clip-tokenizer", demo.Dir, "--prompt", "a red cube", "--lora", demo.LoRA + ":1"}
	plain, _ := generatePNG(t, nil, base[:6]...)
	lora, _ := generatePNG(t, sup, base...)
	one, _ := generatePNG(t, sup, append(base, "--plugin", "example-scale:tensor="+attn+",factor=1")...)
	zero, params := generatePNG(t, sup, append(base, "--plugin", "example-scale:tensor="+attn+",factor=0")...)
	if bytes.Equal(plain, lora) {
		t.Fatal("the demo LoRA changed no pixel")
	}
	if !bytes.Equal(lora, one) {
		t.Error("factor=1 after the LoRA changed the image")
	}
	if bytes.Equal(lora, zero) {
		t.Error("factor=0 after the LoRA changed no pixel")
	}
	if want := "<lora:tiny-lora:1>"; !strings.Contains(params, want) || !strings.Contains(params, "Plugins: ") {
		t.Errorf("parameters lack the LoRA tag %q or the Plugins field:\n%s", want, params)
	}
}

func TestGenerateThirdPartyPluginRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts a plugin process")
	}
	exe, sum := buildExampleScale(t)
	demo, err := writeDemoModels(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	good := host.InstalledPlugin{Name: "example-scale", Path: exe, SHA256: sum}
	bad := host.InstalledPlugin{Name: "example-scale", Path: exe, SHA256: strings.Repeat("0", 64)}
	tests := []struct {
		name      string
		installed []host.InstalledPlugin
		plugin    string
		want      []string
	}{
		{"not installed", nil, "example-scale:factor=1", []string{"--plugin example-scale: not installed", "plugins.json"}},
		{"wrong sha256", []host.InstalledPlugin{bad}, "example-scale:factor=1", []string{"--plugin example-scale", `plugin "example-scale"`, "checksums did not match", "sha256 listed in plugins.json"}},
		{"unknown param", []host.InstalledPlugin{good}, "example-scale:tensor=" + outConv + ",factr=2",
			[]string{`plugin "example-scale": unknown parameter "factr"`, "accepted: tensor, factor"}},
		{"bad type", []host.InstalledPlugin{good}, "example-scale:tensor=" + outConv + ",factor=big",
			[]string{`plugin "example-scale": parameter "factor": "big" is not a float`}},
		{"unknown tensor", []host.InstalledPlugin{good}, "example-scale:tensor=no.such,factor=2",
			[]string{`plugin "example-scale"`, `model has no tensor "no.such"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			installPlugins(t, tt.installed...)
			var stderr bytes.Buffer
			o, err := parseGenerateFlags([]string{"--model", demo.Checkpoint, "--clip-tokenizer", demo.Dir, "--prompt", "a cube",
				"--steps", "1", "--width", "64", "--height", "64", "--seed", "1", "-o", filepath.Join(t.TempDir(), "o.png"),
				"--plugin", tt.plugin}, &stderr)
			if err != nil {
				t.Fatal(err)
			}
			err = generate(context.Background(), o, &stderr)
			if err == nil {
				t.Fatal("generate succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}
