// device_test.go: device selection. The parsers are table-tested; opening
// runs without a driver here (cuda names what is missing, auto falls back
// to the CPU with one log line) and, in a child process, against the
// stand-in CUDA libraries (cuda opens the stand-in GPU in the asked
// dtype; without cuBLAS the error names it).
package host

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/nn"
)

func TestParseDeviceChoice(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		wantErr  bool
	}{
		{"cpu", DeviceCPU, false},
		{"CUDA", DeviceCUDA, false},
		{" auto ", DeviceAuto, false},
		{"gpu", "", true},
		{"", "", true},
	} {
		got, err := ParseDeviceChoice(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("ParseDeviceChoice(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), "cpu, cuda, auto") {
			t.Errorf("ParseDeviceChoice(%q) error %q does not list the choices", tc.in, err)
		}
	}
}

func TestParseCUDADType(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		wantErr  bool
	}{
		{"", DTypeF16, false},
		{"f16", DTypeF16, false},
		{"FP16", DTypeF16, false},
		{"f32", DTypeF32, false},
		{"float32", DTypeF32, false},
		{"bf16", "", true},
	} {
		got, err := ParseCUDADType(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("ParseCUDADType(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestParseKernelDriverVersion(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"proprietary", "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\nGCC version:  gcc 12\n", "550.54.15"},
		{"open", "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16)\n", "570.86.15"},
		{"no NVRM line", "GCC version: 12.2.0\n", ""},
		{"empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseKernelDriverVersion(tc.in); got != tc.want {
				t.Fatalf("parseKernelDriverVersion = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestOpenDeviceCPU(t *testing.T) {
	d, err := OpenDevice("cpu", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.OnGPU() || d.Kind != DeviceCPU || d.String() != "cpu" || d.Info().Kind != DeviceCPU {
		t.Fatalf("cpu device = %+v (%s)", d, d)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDevice("tpu", "", nil); err == nil || !strings.Contains(err.Error(), "--device") {
		t.Fatalf("OpenDevice(tpu) error %v, want one naming --device", err)
	}
	if _, err := OpenDevice("cuda", "bf16", nil); err == nil || !strings.Contains(err.Error(), EnvCUDADType) {
		t.Fatalf("OpenDevice(cuda, bf16) error %v, want one naming %s", err, EnvCUDADType)
	}
}

// TestOpenDeviceWithoutDriver needs a machine without a usable driver (it
// skips where one is present; the stand-in test covers that side).
func TestOpenDeviceWithoutDriver(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in a stand-in child")
	}
	if cuda.Available() == nil {
		t.Skip("a CUDA device is present")
	}
	_, err := OpenDevice("cuda", "", nil)
	if err == nil {
		t.Fatal("--device cuda opened without a driver")
	}
	if !strings.Contains(err.Error(), "--device cuda") || !strings.Contains(err.Error(), "--device cpu") {
		t.Errorf("error %q should name --device cuda and suggest --device cpu", err)
	}
	var log bytes.Buffer
	d, err := OpenDevice("auto", "", &log)
	if err != nil {
		t.Fatal(err)
	}
	if d.OnGPU() || d.Fallback == "" {
		t.Errorf("auto without a driver = %+v, want the CPU with a fallback reason", d)
	}
	if lines := strings.Count(log.String(), "\n"); lines != 1 || !strings.Contains(log.String(), "running on the CPU") {
		t.Errorf("auto logged %q, want one line saying it runs on the CPU", log.String())
	}
}

func TestOpenDeviceStandIn(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	env := cudatest.Build(t)
	cudatest.RunChild(t, "TestOpenDeviceStandInChild", env)
	// The stand-in driver alone, without cuBLAS: the folder with the
	// libraries is replaced by an empty one.
	noBLAS := slices.Clone(env)
	for i, kv := range noBLAS {
		if strings.HasPrefix(kv, "SDBRIDGE_CUDA_LIB_DIR=") {
			noBLAS[i] = "SDBRIDGE_CUDA_LIB_DIR=" + t.TempDir()
		}
	}
	cudatest.RunChild(t, "TestOpenDeviceNoCuBLASChild", noBLAS)
}

func TestOpenDeviceStandInChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestOpenDeviceStandIn")
	}
	for _, tc := range []struct {
		choice, dtype string
		want          nn.GPUDType
	}{
		{"cuda", "", nn.GPUF16},
		{"auto", "f32", nn.GPUF32},
	} {
		d, err := OpenDevice(tc.choice, tc.dtype, nil)
		if err != nil {
			t.Fatalf("OpenDevice(%s, %q): %v", tc.choice, tc.dtype, err)
		}
		if !d.OnGPU() || d.GPU.DType != tc.want {
			t.Errorf("OpenDevice(%s, %q) = %s with dtype %v, want a GPU with %v", tc.choice, tc.dtype, d, d.GPU.DType, tc.want)
		}
		info := d.Info()
		if info.Kind != DeviceCUDA || info.Card == "" || info.Arch == "" || info.CUDADriver == "" || info.DType == "" {
			t.Errorf("Info() = %+v, want card, arch, CUDA driver and dtype", info)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpenDeviceNoCuBLASChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestOpenDeviceStandIn")
	}
	_, err := OpenDevice("cuda", "", nil)
	if err == nil || !strings.Contains(err.Error(), "cuBLAS") || !strings.Contains(err.Error(), "--device cpu") {
		t.Fatalf("OpenDevice(cuda) without cuBLAS: %v, want an error naming cuBLAS and --device cpu", err)
	}
	var log bytes.Buffer
	d, err := OpenDevice("auto", "", &log)
	if err != nil || d.OnGPU() || !strings.Contains(log.String(), "cuBLAS") {
		t.Fatalf("auto without cuBLAS = %v, %v (log %q), want the CPU and a line naming cuBLAS", d, err, log.String())
	}
}
