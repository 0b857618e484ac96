// plugins_test.go: the plugin processes of the golden runs. One supervisor
// serves the whole test binary, with the lora, controlnet and ella plugins
// registered as this test binary re-executed (TestGoldenPluginHelper serves
// the plugin named by goldenPluginEnv); each process starts on first use
// and is shared by every case. It does not drive any plugin itself.
package golden

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/plugins/controlnet"
	"github.com/sdbridge/sdbridge/plugins/ella"
	"github.com/sdbridge/sdbridge/plugins/lora"
)

const goldenPluginEnv = "SDBRIDGE_GOLDEN_PLUGIN"

// goldenPluginServers are the plugins a helper process can serve.
var goldenPluginServers = map[string]func(){"lora": lora.Serve, "controlnet": controlnet.Serve, "ella": ella.Serve}

// TestGoldenPluginHelper is a plugin process (helper-process pattern); it
// skips in a normal test run.
func TestGoldenPluginHelper(t *testing.T) {
	serve, ok := goldenPluginServers[os.Getenv(goldenPluginEnv)]
	if !ok {
		t.Skip("helper process serving a plugin to the golden runs")
	}
	serve()
	os.Exit(0)
}

// pluginHelperSpec starts plugin name as this test binary re-executed.
func pluginHelperSpec(name string) (host.Spec, error) {
	exe, err := os.Executable()
	if err != nil {
		return host.Spec{}, err
	}
	return host.Spec{Name: name, Path: exe, Args: []string{"-test.run=^TestGoldenPluginHelper$"},
		Env: []string{goldenPluginEnv + "=" + name}, BuiltIn: true}, nil
}

var (
	goldenSupOnce sync.Once
	goldenSup     *host.Supervisor
	goldenSupErr  error
)

// goldenPlugins is the shared supervisor with every plugin registered.
func goldenPlugins() (*host.Supervisor, error) {
	goldenSupOnce.Do(func() {
		sup, err := host.NewSupervisor(host.Options{LogOutput: io.Discard, CallTimeout: 5 * time.Minute})
		if err != nil {
			goldenSupErr = err
			return
		}
		for _, name := range []string{"lora", "controlnet", "ella"} {
			spec, err := pluginHelperSpec(name)
			if err == nil {
				_, err = sup.Register(spec)
			}
			if err != nil {
				sup.Close()
				goldenSupErr = err
				return
			}
		}
		goldenSup = sup
	})
	return goldenSup, goldenSupErr
}

// TestMain stops the shared plugin processes and removes their socket
// directory after the run.
func TestMain(m *testing.M) {
	code := m.Run()
	if goldenSup != nil {
		goldenSup.Close()
	}
	os.Exit(code)
}

// goldenPlugin is one plugin of the shared supervisor.
func goldenPlugin(name string) (*host.Plugin, error) {
	sup, err := goldenPlugins()
	if err != nil {
		return nil, err
	}
	return sup.Get(name)
}

// caseScalar reads a one-value input (a strength) as the decimal the
// reference was given (0.8, not float32(0.8) widened), or def when absent.
func caseScalar(c *Case, name string, def float64) (float64, error) {
	if !c.HasInput(name) {
		return def, nil
	}
	v, _, err := c.Input(name)
	if err != nil {
		return 0, err
	}
	if len(v) != 1 {
		return 0, fmt.Errorf("%s: want one value, got %d", name, len(v))
	}
	return strconv.ParseFloat(strconv.FormatFloat(float64(v[0]), 'g', -1, 32), 64)
}
