// device_test.go: where the golden cases run. SDBRIDGE_DEVICE (cpu when
// unset, cuda, auto) picks the device, opened once per test process;
// SDBRIDGE_CUDA_DTYPE (f16 default, f32) its dtype. On a GPU a kind with a
// GPU runner (gpuRunners) runs there and is held to max(case tolerance,
// 1e-2) in f16, the case's own tolerance in f32; a kind without one runs
// on the CPU and its golden line says so. It does not implement any model:
// the runners wrap the CPU models with their models.*CUDA types.
package golden

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sdbridge/sdbridge/host"
)

// gpuRunner runs one case on the device's GPU. notes name the parts that
// still ran on the CPU (a plugin without a GPU path), nil when none did.
type gpuRunner func(c *Case, d *host.Device) (res Result, notes []string, err error)

// gpuRunners are the kinds with a GPU path.
var gpuRunners = map[string]gpuRunner{
	"unet":            runUNetGPU,
	"unet_controlnet": runUNetControlNetGPU,
	"controlnet":      runControlNetGPU,
	"clip_text":       runCLIPTextGPU,
	"t5_encoder":      runT5EncoderGPU,
	"ella":            runELLAGPU,
	"vae_decode":      runVAEDecodeGPU,
	"vae_encode":      runVAEEncodeGPU,
	"txt2img":         runTxt2ImgGPU,
}

// f16Tolerance is the floor of the golden tolerance in fp16 mode.
const f16Tolerance = 1e-2

var (
	goldenDevOnce sync.Once
	goldenDev     *host.Device
	goldenDevErr  error
)

// goldenDevice is this process's device ($SDBRIDGE_DEVICE), opened once
// and kept open until the process exits (the GPU copies of every case are
// freed by their runners).
func goldenDevice() (*host.Device, error) {
	goldenDevOnce.Do(func() {
		goldenDev, goldenDevErr = host.DeviceFromEnv(os.Stderr)
	})
	return goldenDev, goldenDevErr
}

// deviceTolerance is the tolerance of c when it ran on d's GPU.
func deviceTolerance(c *Case, d *host.Device) float64 {
	if d.DType == host.DTypeF32 {
		return c.Tolerance
	}
	return max(c.Tolerance, f16Tolerance)
}

// runOnDevice runs c where it belongs on d: its kind's GPU runner (with
// the device tolerance set on c) or the CPU runner. where is the golden
// line's suffix ("" on a CPU run; "device=cuda/f16 tol=0.01 1.2s", or
// "device=cpu (no GPU path for <kind>)" on a GPU run).
func runOnDevice(c *Case, d *host.Device, cpu Runner) (got Result, where string, err error) {
	if !d.OnGPU() {
		got, err = cpu(c)
		if os.Getenv(host.EnvDevice) != "" && d.Fallback != "" {
			where = "device=cpu (auto: no GPU)"
		}
		return got, where, err
	}
	gpu, ok := gpuRunners[c.Kind]
	if !ok {
		got, err = cpu(c)
		return got, fmt.Sprintf("device=cpu (no GPU path for %s)", c.Kind), err
	}
	c.Tolerance = deviceTolerance(c, d)
	t0 := time.Now()
	got, notes, err := gpu(c, d)
	where = fmt.Sprintf("device=cuda/%s tol=%.3g %.1fs", d.DType, c.Tolerance, time.Since(t0).Seconds())
	if len(notes) > 0 {
		where += " (" + strings.Join(notes, "; ") + ")"
	}
	return got, where, err
}

// closeGPU runs a device copy's Close, keeping the first error.
func closeGPU(close func() error, err *error) {
	if cerr := close(); *err == nil && cerr != nil {
		*err = cerr
	}
}
