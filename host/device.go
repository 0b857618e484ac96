// device.go chooses where the models run: "cpu", "cuda" (the first CUDA
// device, or a clear error naming what is missing: the driver, a device,
// cuBLAS) or "auto" (cuda when a device opens, else the CPU with one log
// line saying why). The choice comes from a --device flag or, for the
// golden runner and as the flags' default, from SDBRIDGE_DEVICE; the GPU's
// activation dtype from SDBRIDGE_CUDA_DTYPE (f16, the default, or f32 for
// exactness checks). It opens the GPU once (nn.OpenGPU) and words the
// out-of-GPU-memory errors of the models on it (explainOOM); it does not move
// any model there (pipeline_device.go does) and does not pick among
// several GPUs (always ordinal 0).
package host

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/nn"
)

// Device choices and the names of the environment variables that set them.
const (
	DeviceCPU  = "cpu"
	DeviceCUDA = "cuda"
	DeviceAuto = "auto"

	EnvDevice    = "SDBRIDGE_DEVICE"
	EnvCUDADType = "SDBRIDGE_CUDA_DTYPE"

	DTypeF16 = "f16"
	DTypeF32 = "f32"
)

// DeviceChoices lists the accepted --device values.
var DeviceChoices = []string{DeviceCPU, DeviceCUDA, DeviceAuto}

// Device is where the models of a run compute: the CPU (GPU nil) or one
// opened CUDA device.
type Device struct {
	Kind  string  // DeviceCPU or DeviceCUDA, never auto
	GPU   *nn.GPU // nil on the CPU
	DType string  // DTypeF16 or DTypeF32 on cuda, "" on the CPU
	// Fallback says why "auto" chose the CPU ("" otherwise).
	Fallback string
}

// CPUDevice is the CPU.
func CPUDevice() *Device { return &Device{Kind: DeviceCPU} }

// OnGPU reports whether d is a CUDA device.
func (d *Device) OnGPU() bool { return d != nil && d.GPU != nil }

// String is "cpu" or "cuda:0 <card> (sm_90, ...) f16".
func (d *Device) String() string {
	if !d.OnGPU() {
		return DeviceCPU
	}
	return d.GPU.Dev.String() + " " + d.DType
}

// ID names the device for plugins (Plugin.SetDevice): "cpu" or "cuda:N".
func (d *Device) ID() string {
	if !d.OnGPU() {
		return DeviceCPU
	}
	return fmt.Sprintf("cuda:%d", d.GPU.Dev.Ordinal)
}

// Close releases the GPU (after every model on it is closed); the CPU
// device has nothing to release.
func (d *Device) Close() error {
	if !d.OnGPU() {
		return nil
	}
	err := d.GPU.Close()
	d.GPU = nil
	return err
}

// DeviceInfo describes a device for reports (bench --json, logs): the
// card with every figure.
type DeviceInfo struct {
	Kind       string  `json:"device"`                // cpu or cuda
	Card       string  `json:"card,omitempty"`        // e.g. "NVIDIA H100 80GB HBM3"
	Arch       string  `json:"arch,omitempty"`        // e.g. "sm_90"
	SMs        int     `json:"sms,omitempty"`         // multiprocessors
	MemGiB     float64 `json:"mem_gib,omitempty"`     // device memory
	Driver     string  `json:"driver,omitempty"`      // kernel module version, e.g. "570.86.15"
	CUDADriver string  `json:"cuda_driver,omitempty"` // the driver's CUDA version, e.g. "13.0"
	DType      string  `json:"dtype,omitempty"`       // f16 or f32
}

// Info describes d. The kernel driver version is read from
// /proc/driver/nvidia/version ("" where it cannot be read).
func (d *Device) Info() DeviceInfo {
	if !d.OnGPU() {
		return DeviceInfo{Kind: DeviceCPU}
	}
	dev := d.GPU.Dev
	info := DeviceInfo{Kind: DeviceCUDA, Card: dev.Name, Arch: dev.Arch(), SMs: dev.SMs,
		MemGiB: float64(dev.TotalMem) / (1 << 30), DType: d.DType, Driver: kernelDriverVersion()}
	if di, err := cuda.Driver(); err == nil {
		info.CUDADriver = fmt.Sprintf("%d.%d", di.Version/1000, di.Version%1000/10)
	}
	return info
}

// kernelDriverVersion is the NVIDIA kernel module's version from
// /proc/driver/nvidia/version ("NVRM version: NVIDIA UNIX x86_64 Kernel
// Module  570.86.15  ..."), or "".
func kernelDriverVersion() string {
	b, err := os.ReadFile("/proc/driver/nvidia/version")
	if err != nil {
		return ""
	}
	return parseKernelDriverVersion(string(b))
}

// parseKernelDriverVersion returns the first version-looking field
// (digits and dots, e.g. 570.86.15) of the NVRM line.
func parseKernelDriverVersion(s string) string {
	for _, line := range strings.Split(s, "\n") {
		if !strings.HasPrefix(line, "NVRM") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if strings.Contains(f, ".") && strings.Trim(f, "0123456789.") == "" {
				return f
			}
		}
	}
	return ""
}

// DefaultDevice is the --device default: $SDBRIDGE_DEVICE, else cpu.
func DefaultDevice() string {
	if v := strings.TrimSpace(os.Getenv(EnvDevice)); v != "" {
		return v
	}
	return DeviceCPU
}

// ParseDeviceChoice checks a --device value (case-insensitive).
func ParseDeviceChoice(s string) (string, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	for _, c := range DeviceChoices {
		if v == c {
			return c, nil
		}
	}
	return "", fmt.Errorf("unknown device %q (valid: %s)", s, strings.Join(DeviceChoices, ", "))
}

// ParseCUDADType checks a GPU dtype ("" is f16; fp16/half and fp32/float
// are accepted too).
func ParseCUDADType(s string) (string, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "f16", "fp16", "half", "float16":
		return DTypeF16, nil
	case "f32", "fp32", "float", "float32":
		return DTypeF32, nil
	}
	return "", fmt.Errorf("unknown CUDA dtype %q (valid: f16, f32)", s)
}

// OpenDevice opens the device for choice (cpu, cuda or auto) with the GPU
// activation dtype ("" reads $SDBRIDGE_CUDA_DTYPE, default f16). "cuda"
// without a usable driver, device or cuBLAS is an error that says which
// is missing; "auto" then falls back to the CPU and writes one line to log
// (nil: no line).
func OpenDevice(choice, dtype string, log io.Writer) (*Device, error) {
	c, err := ParseDeviceChoice(choice)
	if err != nil {
		return nil, fmt.Errorf("--device: %w", err)
	}
	if c == DeviceCPU {
		return CPUDevice(), nil
	}
	if dtype == "" {
		dtype = os.Getenv(EnvCUDADType)
	}
	dt, err := ParseCUDADType(dtype)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvCUDADType, err)
	}
	g, err := nn.OpenGPU(0)
	if err == nil {
		if err = setGPUDType(g, dt); err != nil {
			g.Close()
		}
	}
	if err != nil {
		err = explainGPUError(err)
		if c == DeviceCUDA {
			return nil, fmt.Errorf("--device cuda: %w", err)
		}
		d := CPUDevice()
		d.Fallback = err.Error()
		if log != nil {
			fmt.Fprintf(log, "device auto: no usable CUDA device (%v); running on the CPU\n", err)
		}
		return d, nil
	}
	return &Device{Kind: DeviceCUDA, GPU: g, DType: dt}, nil
}

// DeviceFromEnv opens the device named by $SDBRIDGE_DEVICE (cpu when
// unset) with $SDBRIDGE_CUDA_DTYPE, as the golden runner does.
func DeviceFromEnv(log io.Writer) (*Device, error) {
	d, err := OpenDevice(DefaultDevice(), "", log)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvDevice, err)
	}
	return d, nil
}

// explainGPUError makes sure an nn.OpenGPU error says what to do: the
// driver's and cuBLAS's errors already name the missing library and
// --device cpu; the others (a driver that fails to initialise a context,
// out of memory) get the hint added.
func explainGPUError(err error) error {
	if strings.Contains(err.Error(), "--device cpu") {
		return err
	}
	return fmt.Errorf("%w (use --device cpu)", err)
}

// setGPUDType sets the dtype the GPU's ops create and upload weights in.
func setGPUDType(g *nn.GPU, dt string) error {
	switch dt {
	case DTypeF16:
		g.DType = nn.GPUF16
	case DTypeF32:
		g.DType = nn.GPUF32
	default:
		return fmt.Errorf("unknown CUDA dtype %q", dt)
	}
	return nil
}

// explainOOM turns a device allocation the GPU had no room for (a
// *cuda.OutOfMemoryError anywhere in err's chain) into one message saying
// so: what was being allocated (what, e.g. "for the u-net's activations
// at latents [2 4 32 32] (256x256 pixels)"), the bytes asked for, the
// free and total device memory, and what to try given the activation
// dtype (DTypeF16 or DTypeF32). Other errors come back as they are.
func explainOOM(err error, what, dtype string) error {
	var oom *cuda.OutOfMemoryError
	if !errors.As(err, &oom) {
		return err
	}
	return &deviceOOMError{what: what, dtype: dtype, oom: oom, err: err}
}

// deviceOOMError is explainOOM's error; errors.As still finds the
// *cuda.OutOfMemoryError through it.
type deviceOOMError struct {
	what, dtype string
	oom         *cuda.OutOfMemoryError
	err         error // the whole chain, from the caller's wrapping to the driver
}

// oomHint is what to try after running out of GPU memory with activations
// of dtype (DTypeF16 or DTypeF32; "" when unknown): deviceOOMError's
// advice, and what explainPluginOOM (controlnet_oom.go) appends to a
// plugin's out-of-memory error.
func oomHint(dtype string) string {
	switch dtype {
	case DTypeF32:
		return "try --cuda-dtype f16 (half the bytes of f32), a smaller --width/--height or --batch, or --device cpu"
	case DTypeF16:
		return "try a smaller --width/--height or --batch, or --device cpu (already at --cuda-dtype f16)"
	}
	return "try a smaller --width/--height or --batch, or --device cpu"
}

func (e *deviceOOMError) Error() string {
	dt := e.dtype
	if dt != DTypeF32 {
		dt = DTypeF16 // the default dtype
	}
	hint := oomHint(dt)
	return fmt.Sprintf("out of GPU memory %s: %s requested, %s free of %s; %s (%v)",
		e.what, cuda.FormatBytes(e.oom.Requested), cuda.FormatBytes(e.oom.Free), cuda.FormatBytes(e.oom.Total), hint, e.err)
}

func (e *deviceOOMError) Unwrap() error { return e.err }
