// Package cuda reaches an NVIDIA GPU through the CUDA driver API, cuBLAS and
// NVRTC, all opened at run time with purego: the project builds with
// CGO_ENABLED=0 and no CUDA installed, and on a machine without a driver
// every entry point returns ErrNoDriver (the CPU path then runs).
//
// driver.go binds libcuda.so.1 and turns CUresult codes into Go errors. It
// binds only the driver functions the project calls (device query, primary
// context, memory, streams, modules, launches, legacy IPC, and optionally
// events, async copies, pinned host memory, stream capture and graphs); it
// does not bind the runtime API (libcudart) or VMM yet.
package cuda

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"
)

// ErrNoDriver is returned by every entry point when libcuda cannot be loaded.
var ErrNoDriver = errors.New("cuda: libcuda.so.1 not found: no NVIDIA driver on this machine; use --device cpu")

// ErrNoDevice is returned when the driver loads but reports no GPU.
var ErrNoDevice = errors.New("cuda: the NVIDIA driver reports no CUDA device; use --device cpu")

// Result is a CUresult (driver API status code).
type Result int32

// Error is a failed driver call: the function, its code and the driver's
// own name and description of the code.
type Error struct {
	Op   string
	Code Result
}

func (e *Error) Error() string {
	name, desc := resultText(e.Code)
	return fmt.Sprintf("cuda: %s: %s (%d): %s", e.Op, name, int(e.Code), desc)
}

// check converts a CUresult into an error naming op (nil on success).
func check(op string, r Result) error {
	if r == 0 {
		return nil
	}
	return &Error{Op: op, Code: r}
}

// Device attribute numbers (CUdevice_attribute, cuda.h).
const (
	attrMultiprocessorCount = 16
	attrComputeMajor        = 75
	attrComputeMinor        = 76
	attrVMMSupported        = 102
	attrPosixFDSupported    = 103
)

// driverAPI holds the bound libcuda functions.
type driverAPI struct {
	path string

	cuInit                    func(flags uint32) Result
	cuDriverGetVersion        func(v *int32) Result
	cuDeviceGetCount          func(n *int32) Result
	cuDeviceGet               func(d *int32, ordinal int32) Result
	cuDeviceGetName           func(name *byte, n int32, d int32) Result
	cuDeviceGetAttribute      func(v *int32, attr int32, d int32) Result
	cuDeviceTotalMem          func(b *uint64, d int32) Result
	cuDevicePrimaryCtxRetain  func(ctx *uintptr, d int32) Result
	cuDevicePrimaryCtxRelease func(d int32) Result
	cuCtxSetCurrent           func(ctx uintptr) Result
	cuCtxSynchronize          func() Result
	cuMemAlloc                func(p *uint64, n uint64) Result
	cuMemFree                 func(p uint64) Result
	cuMemGetInfo              func(free, total *uint64) Result
	cuMemcpyHtoD              func(dst uint64, src unsafe.Pointer, n uint64) Result
	cuMemcpyDtoH              func(dst unsafe.Pointer, src uint64, n uint64) Result
	cuMemcpyDtoD              func(dst, src uint64, n uint64) Result
	cuMemsetD8                func(dst uint64, v uint8, n uint64) Result
	cuMemsetD32               func(dst uint64, v uint32, n uint64) Result
	cuMemHostRegister         func(p unsafe.Pointer, n uint64, flags uint32) Result
	cuMemHostUnregister       func(p unsafe.Pointer) Result
	cuStreamCreate            func(s *uintptr, flags uint32) Result
	cuStreamSynchronize       func(s uintptr) Result
	cuStreamDestroy           func(s uintptr) Result
	cuModuleLoadData          func(m *uintptr, image unsafe.Pointer) Result
	cuModuleUnload            func(m uintptr) Result
	cuModuleGetFunction       func(f *uintptr, m uintptr, name string) Result
	cuLaunchKernel            func(f uintptr, gx, gy, gz, bx, by, bz, shmem uint32, stream uintptr, params unsafe.Pointer, extra unsafe.Pointer) Result
	cuFuncSetAttribute        func(f uintptr, attr int32, v int32) Result
	cuGetErrorString          func(r Result, s **byte) Result
	cuGetErrorName            func(r Result, s **byte) Result
	cuIpcGetMemHandle         func(h *IPCHandle, p uint64) Result
	cuIpcOpenMemHandle        func(p *uint64, h IPCHandle, flags uint32) Result
	cuIpcCloseMemHandle       func(p uint64) Result

	// Optional entry points (nil when the library lacks them; callers go
	// through need, which names the missing symbol). Signatures follow
	// cuda.h of CUDA 12/13; handles (CUevent, CUgraph, ...) are uintptr.
	cuMemGetAddressRange        func(base *uint64, size *uint64, p uint64) Result
	cuEventCreate               func(e *uintptr, flags uint32) Result
	cuEventRecord               func(e uintptr, s uintptr) Result
	cuEventSynchronize          func(e uintptr) Result
	cuEventElapsedTimeV2        func(ms *float32, start, end uintptr) Result
	cuEventElapsedTime          func(ms *float32, start, end uintptr) Result
	cuEventDestroy              func(e uintptr) Result
	cuMemcpyHtoDAsync           func(dst uint64, src unsafe.Pointer, n uint64, s uintptr) Result
	cuMemcpyDtoHAsync           func(dst unsafe.Pointer, src uint64, n uint64, s uintptr) Result
	cuMemcpyDtoDAsync           func(dst, src uint64, n uint64, s uintptr) Result
	cuMemsetD8Async             func(dst uint64, v uint8, n uint64, s uintptr) Result
	cuMemsetD32Async            func(dst uint64, v uint32, n uint64, s uintptr) Result
	cuMemHostAlloc              func(p *unsafe.Pointer, n uint64, flags uint32) Result
	cuMemFreeHost               func(p unsafe.Pointer) Result
	cuStreamBeginCapture        func(s uintptr, mode int32) Result
	cuStreamEndCapture          func(s uintptr, g *uintptr) Result
	cuStreamIsCapturing         func(s uintptr, status *int32) Result
	cuGraphInstantiateWithFlags func(exec *uintptr, g uintptr, flags uint64) Result
	cuGraphLaunch               func(exec uintptr, s uintptr) Result
	cuGraphExecDestroy          func(exec uintptr) Result
	cuGraphDestroy              func(g uintptr) Result
}

func (a *driverAPI) syms() []sym {
	return []sym{
		{name: "cuInit", fn: &a.cuInit},
		{name: "cuDriverGetVersion", fn: &a.cuDriverGetVersion},
		{name: "cuDeviceGetCount", fn: &a.cuDeviceGetCount},
		{name: "cuDeviceGet", fn: &a.cuDeviceGet},
		{name: "cuDeviceGetName", fn: &a.cuDeviceGetName},
		{name: "cuDeviceGetAttribute", fn: &a.cuDeviceGetAttribute},
		{name: "cuDeviceTotalMem_v2", fn: &a.cuDeviceTotalMem},
		{name: "cuDevicePrimaryCtxRetain", fn: &a.cuDevicePrimaryCtxRetain},
		{name: "cuDevicePrimaryCtxRelease_v2", fn: &a.cuDevicePrimaryCtxRelease},
		{name: "cuCtxSetCurrent", fn: &a.cuCtxSetCurrent},
		{name: "cuCtxSynchronize", fn: &a.cuCtxSynchronize},
		{name: "cuMemAlloc_v2", fn: &a.cuMemAlloc},
		{name: "cuMemFree_v2", fn: &a.cuMemFree},
		{name: "cuMemGetInfo_v2", fn: &a.cuMemGetInfo},
		{name: "cuMemcpyHtoD_v2", fn: &a.cuMemcpyHtoD},
		{name: "cuMemcpyDtoH_v2", fn: &a.cuMemcpyDtoH},
		{name: "cuMemcpyDtoD_v2", fn: &a.cuMemcpyDtoD},
		{name: "cuMemsetD8_v2", fn: &a.cuMemsetD8},
		{name: "cuMemsetD32_v2", fn: &a.cuMemsetD32},
		{name: "cuMemHostRegister_v2", fn: &a.cuMemHostRegister, optional: true},
		{name: "cuMemHostUnregister", fn: &a.cuMemHostUnregister, optional: true},
		{name: "cuStreamCreate", fn: &a.cuStreamCreate},
		{name: "cuStreamSynchronize", fn: &a.cuStreamSynchronize},
		{name: "cuStreamDestroy_v2", fn: &a.cuStreamDestroy},
		{name: "cuModuleLoadData", fn: &a.cuModuleLoadData},
		{name: "cuModuleUnload", fn: &a.cuModuleUnload},
		{name: "cuModuleGetFunction", fn: &a.cuModuleGetFunction},
		{name: "cuLaunchKernel", fn: &a.cuLaunchKernel},
		{name: "cuFuncSetAttribute", fn: &a.cuFuncSetAttribute, optional: true},
		{name: "cuGetErrorString", fn: &a.cuGetErrorString},
		{name: "cuGetErrorName", fn: &a.cuGetErrorName},
		{name: "cuIpcGetMemHandle", fn: &a.cuIpcGetMemHandle, optional: true},
		{name: "cuIpcOpenMemHandle_v2", fn: &a.cuIpcOpenMemHandle, optional: true},
		{name: "cuIpcCloseMemHandle", fn: &a.cuIpcCloseMemHandle, optional: true},
		{name: "cuMemGetAddressRange_v2", fn: &a.cuMemGetAddressRange, optional: true},
		{name: "cuEventCreate", fn: &a.cuEventCreate, optional: true},
		{name: "cuEventRecord", fn: &a.cuEventRecord, optional: true},
		{name: "cuEventSynchronize", fn: &a.cuEventSynchronize, optional: true},
		{name: "cuEventElapsedTime_v2", fn: &a.cuEventElapsedTimeV2, optional: true},
		{name: "cuEventElapsedTime", fn: &a.cuEventElapsedTime, optional: true},
		{name: "cuEventDestroy_v2", fn: &a.cuEventDestroy, optional: true},
		{name: "cuMemcpyHtoDAsync_v2", fn: &a.cuMemcpyHtoDAsync, optional: true},
		{name: "cuMemcpyDtoHAsync_v2", fn: &a.cuMemcpyDtoHAsync, optional: true},
		{name: "cuMemcpyDtoDAsync_v2", fn: &a.cuMemcpyDtoDAsync, optional: true},
		{name: "cuMemsetD8Async", fn: &a.cuMemsetD8Async, optional: true},
		{name: "cuMemsetD32Async", fn: &a.cuMemsetD32Async, optional: true},
		{name: "cuMemHostAlloc", fn: &a.cuMemHostAlloc, optional: true},
		{name: "cuMemFreeHost", fn: &a.cuMemFreeHost, optional: true},
		{name: "cuStreamBeginCapture_v2", fn: &a.cuStreamBeginCapture, optional: true},
		{name: "cuStreamEndCapture", fn: &a.cuStreamEndCapture, optional: true},
		{name: "cuStreamIsCapturing", fn: &a.cuStreamIsCapturing, optional: true},
		{name: "cuGraphInstantiateWithFlags", fn: &a.cuGraphInstantiateWithFlags, optional: true},
		{name: "cuGraphLaunch", fn: &a.cuGraphLaunch, optional: true},
		{name: "cuGraphExecDestroy", fn: &a.cuGraphExecDestroy, optional: true},
		{name: "cuGraphDestroy", fn: &a.cuGraphDestroy, optional: true},
	}
}

// driverNames are the sonames of the driver library, in order. The
// SDBRIDGE_CUDA_DRIVER variable replaces them with one path (tests use it
// to force the no-driver path).
func driverNames() []string {
	if v := os.Getenv("SDBRIDGE_CUDA_DRIVER"); v != "" {
		return []string{v}
	}
	return []string{"libcuda.so.1", "libcuda.so"}
}

// openDriver loads and binds the driver from names and runs cuInit.
func openDriver(names []string) (*driverAPI, error) {
	path, h, err := openLib(names, nil)
	if err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNoDriver, err)
	}
	a := &driverAPI{path: path}
	if err := bindAll(path, h, a.syms()); err != nil {
		return nil, err
	}
	if err := check("cuInit", a.cuInit(0)); err != nil {
		return nil, fmt.Errorf("cuda: the NVIDIA driver %s loaded but did not initialise (use --device cpu): %w", path, err)
	}
	return a, nil
}

var drv struct {
	once sync.Once
	api  *driverAPI
	err  error
}

// driver returns the process-wide driver binding, loading it on first use.
func driver() (*driverAPI, error) {
	drv.once.Do(func() { drv.api, drv.err = openDriver(driverNames()) })
	return drv.api, drv.err
}

// resultText returns the driver's name and description of r, or
// placeholders when the driver is not loaded.
func resultText(r Result) (name, desc string) {
	a := drv.api
	if a == nil {
		return "CUDA_ERROR", "unknown"
	}
	var p *byte
	if a.cuGetErrorName(r, &p) == 0 {
		name = goString(p)
	}
	p = nil
	if a.cuGetErrorString(r, &p) == 0 {
		desc = goString(p)
	}
	if name == "" {
		name = "CUDA_ERROR_UNKNOWN_CODE"
	}
	return name, desc
}

// Available reports whether a CUDA driver and at least one device are
// present: nil if so, else a clear error (ErrNoDriver, ErrNoDevice or the
// driver's own failure) that says to use --device cpu.
func Available() error {
	a, err := driver()
	if err != nil {
		return err
	}
	var n int32
	if err := check("cuDeviceGetCount", a.cuDeviceGetCount(&n)); err != nil {
		return err
	}
	if n == 0 {
		return ErrNoDevice
	}
	return nil
}

// DriverInfo describes the loaded driver.
type DriverInfo struct {
	Path    string // soname or path that loaded
	Version int    // e.g. 13000 for CUDA 13.0
	Devices int
}

// Driver loads the driver and reports its version and device count.
func Driver() (DriverInfo, error) {
	a, err := driver()
	if err != nil {
		return DriverInfo{}, err
	}
	var v, n int32
	if err := check("cuDriverGetVersion", a.cuDriverGetVersion(&v)); err != nil {
		return DriverInfo{}, err
	}
	if err := check("cuDeviceGetCount", a.cuDeviceGetCount(&n)); err != nil {
		return DriverInfo{}, err
	}
	return DriverInfo{Path: a.path, Version: int(v), Devices: int(n)}, nil
}
