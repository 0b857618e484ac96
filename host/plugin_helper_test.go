// plugin_helper_test.go: the test binary plays the plugin (helper-process
// re-exec pattern). TestMain serves "testplug" when SDBRIDGE_TEST_PLUGIN is
// set; testplug's behaviour (patch arithmetic, crash, hang, bad refs) is
// chosen per call by parameters. Nothing here is used outside tests.
package host

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/sdbridge/sdbridge/plugins/lora"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

func TestMain(m *testing.M) {
	switch os.Getenv("SDBRIDGE_TEST_PLUGIN") {
	case "testplug":
		log := sdk.NewLogger("testplug")
		sdk.Serve(testplug{log: log}, sdk.WithLogger(log))
		os.Exit(0)
	case "lora":
		lora.Serve()
		os.Exit(0)
	}
	if os.Getenv("SDBRIDGE_TEST_HOST") == "1" {
		runTestHost()
	}
	os.Exit(m.Run())
}

type testplug struct{ log hclog.Logger }

func (testplug) Describe(context.Context, *sdk.DescribeRequest) (*sdk.DescribeResponse, error) {
	return &sdk.DescribeResponse{Name: "testplug", Version: "1.2.3", Params: []sdk.ParamSpec{{Name: "scale", Type: sdk.ParamFloat, Default: "1"}}}, nil
}

func (testplug) PlanPatch(_ context.Context, req *sdk.PlanPatchRequest) (*sdk.PlanPatchResponse, error) {
	return &sdk.PlanPatchResponse{Touched: req.Params.All("touch"), ReadsOriginals: req.Params.String("onepass", "") == "1"}, nil
}

func (p testplug) PatchWeights(_ context.Context, req *sdk.PatchWeightsRequest) (*sdk.PatchWeightsResponse, error) {
	scale, _ := req.Params.Float("scale", 1)
	add, _ := req.Params.Float("add", 0)
	mode := req.Params.String("mode", "")
	origs := map[string]*sdk.Tensor{}
	for _, in := range req.Inputs {
		origs[in.Name] = in
	}
	for i, t := range req.Tensors {
		w, err := t.MutableFloat32()
		if err != nil {
			return nil, err
		}
		if in, ok := origs[t.Name]; ok { // one pass: w = original, never read before
			b := in.Bytes()
			for j := range w {
				var one [1]float32
				safetensors.F16ToF32(one[:], []uint16{uint16(b[2*j]) | uint16(b[2*j+1])<<8})
				w[j] = one[0]
			}
		}
		for j := range w {
			w[j] = w[j]*float32(scale) + float32(add)
		}
		if i == 0 && mode == "crash" {
			p.log.Error("testplug about to crash", "tensor", t.Name)
			panic("testplug: crash requested")
		}
		if i == 0 && mode == "hang" {
			select {} // ignore ctx on purpose
		}
	}
	written := sdk.Refs(req.Tensors...)
	switch mode {
	case "badref-oob":
		written[0].Offset = 1 << 40
	case "badref-dtype":
		written[0].DType = sdk.F16
	case "badref-shape":
		written[0].Shape = []int{1}
	case "badref-unknown":
		written[0].Name = "not.granted"
	case "badref-arena":
		written[0].Arena = 1 << 30
	case "error":
		return nil, fmt.Errorf("testplug refuses")
	}
	return &sdk.PatchWeightsResponse{Written: written}, nil
}

func (testplug) EncodePrompt(_ context.Context, req *sdk.EncodePromptRequest) (*sdk.EncodePromptResponse, error) {
	return &sdk.EncodePromptResponse{Handle: "h:" + req.Text, ContextShape: []int{1, 2, 3}}, nil
}

func (testplug) ReleasePrompt(context.Context, *sdk.ReleasePromptRequest) (*sdk.ReleasePromptResponse, error) {
	return &sdk.ReleasePromptResponse{}, nil
}

// Conditioning writes len(handle) + t into every element.
func (testplug) Conditioning(_ context.Context, req *sdk.ConditioningRequest) (*sdk.ConditioningResponse, error) {
	out, err := req.Out.MutableFloat32()
	if err != nil {
		return nil, err
	}
	for i := range out {
		out[i] = float32(len(req.Handle)) + req.Timesteps[0]
	}
	return &sdk.ConditioningResponse{Written: req.Out.TensorRef}, nil
}

// Residuals writes x*2 + t into every output.
func (testplug) Residuals(_ context.Context, req *sdk.ResidualsRequest) (*sdk.ResidualsResponse, error) {
	x, err := req.X.Float32()
	if err != nil {
		return nil, err
	}
	for _, o := range req.Outputs {
		w, err := o.MutableFloat32()
		if err != nil {
			return nil, err
		}
		for i := range w {
			w[i] = 2*x[i%len(x)] + req.Timesteps[0]
		}
	}
	return &sdk.ResidualsResponse{Written: sdk.Refs(req.Outputs...)}, nil
}

// newTestSupervisor returns a supervisor with testplug registered; both are
// closed at the end of the test.
func newTestSupervisor(t testing.TB, sha string) (*Supervisor, *Plugin) {
	t.Helper()
	s, err := NewSupervisor(Options{LogOutput: io.Discard, CallTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	spec := Spec{Name: "testplug", Path: exe, Args: []string{"-test.run=^$"}, Env: []string{"SDBRIDGE_TEST_PLUGIN=testplug"}, SHA256: sha, BuiltIn: sha == ""}
	p, err := s.Register(spec)
	if err != nil {
		t.Fatal(err)
	}
	return s, p
}

func fileSHA256(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// processAlive returns nil if pid exists (and is not a zombie we reaped).
func processAlive(pid int) error {
	time.Sleep(50 * time.Millisecond)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return err
	}
	if strings.Contains(string(b), ") Z ") {
		return fmt.Errorf("zombie")
	}
	return nil
}

// runTestHost is a host process for TestPdeathsig: it starts testplug,
// prints the plugin's pid and waits to be killed.
func runTestHost() {
	s, err := NewSupervisor(Options{LogOutput: io.Discard})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	exe, _ := os.Executable()
	p, err := s.Register(Spec{Name: "testplug", Path: exe, Args: []string{"-test.run=^$"}, Env: []string{"SDBRIDGE_TEST_HOST=", "SDBRIDGE_TEST_PLUGIN=testplug"}, BuiltIn: true})
	if err == nil {
		err = p.Start()
	}
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("plugin", p.Pid())
	select {}
}
