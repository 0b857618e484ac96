// device.go: the --device and --cuda-dtype flags shared by generate, demo,
// dpg, bench and merge, and opening the chosen device (host.OpenDevice:
// cuda | cpu | auto; the default is $SDBRIDGE_DEVICE, else cpu). It does
// not move models anywhere (host.LoadPipeline does, given the device).
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sdbridge/sdbridge/host"
)

// deviceFlags are the parsed device flags of one command.
type deviceFlags struct {
	device string // cpu | cuda | auto
	dtype  string // f16 | f32 | "" ($SDBRIDGE_CUDA_DTYPE, else f16)
}

// addDeviceFlags registers --device and --cuda-dtype on fs.
func addDeviceFlags(fs *flag.FlagSet) *deviceFlags {
	d := &deviceFlags{}
	fs.StringVar(&d.device, "device", host.DefaultDevice(),
		"where the models run: cpu, cuda (the first NVIDIA GPU; an error when none is usable) or auto (cuda when a GPU opens, else cpu); default $"+host.EnvDevice+", else cpu")
	fs.StringVar(&d.dtype, "cuda-dtype", os.Getenv(host.EnvCUDADType),
		"GPU storage dtype: f16 (default; fp32 accumulation) or f32 (exactness checks); default $"+host.EnvCUDADType)
	return d
}

// problems lists what is wrong with the flags without opening anything.
func (d *deviceFlags) problems() []string {
	var errs []string
	if _, err := host.ParseDeviceChoice(d.device); err != nil {
		errs = append(errs, "--device: "+err.Error())
	}
	if _, err := host.ParseCUDADType(d.dtype); err != nil {
		errs = append(errs, "--cuda-dtype: "+err.Error())
	}
	return errs
}

// open opens the chosen device; "auto" without a GPU logs one line to log
// and returns the CPU. Close the device after every model on it.
func (d *deviceFlags) open(log io.Writer) (*host.Device, error) {
	if errs := d.problems(); len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return host.OpenDevice(d.device, d.dtype, log)
}

// args are the flags again, for a command that runs another (demo).
func (d *deviceFlags) args() []string {
	a := []string{"--device", d.device}
	if d.dtype != "" {
		a = append(a, "--cuda-dtype", d.dtype)
	}
	return a
}
