// bench_test.go: every 'sdbridge bench' part runs at tiny shapes and
// reports a positive time, on the CPU (host clock) and, in a child process
// against the stand-in CUDA libraries and the kernel emulator, on the
// "GPU" (CUDA events); the JSON report carries the card, the driver and
// the dtype with the figures.
package main

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/plugins/ella"
	"github.com/sdbridge/sdbridge/safetensors"
)

// tinyBench is a bench at tiny shapes: the tiny SD layout at 64x64 px, a
// 2-layer T5, a 2-block ELLA connector, and this test binary as the LoRA
// plugin.
func tinyBench(t *testing.T, dev *host.Device) *bench {
	layout := models.Tiny(1000)
	return &bench{dev: dev, repeat: 1, h: 8, layout: layout, plugins: testPlugins(t),
		txt2img: txt2imgSettings{steps: 1}, // a one-step smoke run
		src:     models.NewRandomSource(layout.Specs(safetensors.F16), 1),
		t5: models.T5Config{DModel: 64, DKV: 16, DFF: 96, NumHeads: 4, NumLayers: 2, VocabSize: 300,
			NumBuckets: 32, MaxDistance: 128, FeedForwardProj: "gated-gelu", LayerNormEps: 1e-6, ModelType: "t5"},
		ella: ellaShape{specs: ella.ConnectorSpecs(safetensors.F16, 64, 64, 32, 48, 8, 2), din: 48, heads: 4}}
}

// runParts runs every bench part on b and checks each result: timed by
// timer on device, except the LoRA swap and txt2img, plugin round trips on
// the host clock.
func runParts(t *testing.T, b *bench, device, timer string) {
	t.Helper()
	for _, name := range slices.Sorted(maps.Keys(benchParts)) {
		t.Run(name, func(t *testing.T) {
			hostClock := name == "lora-swap" || name == "txt2img" // plugin round trips
			if hostClock && testing.Short() {
				t.Skip("-short: starts plugin processes")
			}
			res, err := benchParts[name](b)
			if err != nil {
				t.Fatal(err)
			}
			timer := timer
			if hostClock {
				timer = timerHost
			}
			if res.Millis <= 0 || res.Part == "" || res.Shape == "" || res.Device != device || res.Timer != timer {
				t.Fatalf("result %+v, want a positive time on %s by %s", res, device, timer)
			}
		})
	}
}

func TestBenchPartsCPU(t *testing.T) {
	runParts(t, tinyBench(t, host.CPUDevice()), host.DeviceCPU, timerHost)
}

func TestBenchPartsCUDA(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	if testing.Short() {
		t.Skip("-short: runs the bench parts on the CUDA emulator")
	}
	cudatest.RunChild(t, "TestBenchPartsCUDAChild", cudatest.Build(t))
}

func TestBenchPartsCUDAChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestBenchPartsCUDA")
	}
	dev, err := host.OpenDevice(host.DeviceCUDA, host.DTypeF16, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	runParts(t, tinyBench(t, dev), host.DeviceCUDA, timerEvents)

	rep := benchReport{DeviceInfo: dev.Info(), Size: 64, Repeat: 1}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"device", "card", "cuda_driver", "dtype", "arch"} {
		if v, ok := m[k].(string); !ok || v == "" {
			t.Errorf("JSON report %s has no %q", b, k)
		}
	}
	if m["device"] != "cuda" || m["dtype"] != "f16" || !strings.Contains(string(b), `"results"`) {
		t.Errorf("JSON report %s: want device cuda, dtype f16 and results", b)
	}
}
