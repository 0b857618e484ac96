// device.go: one GPU as a Device. CUDA's current context is per OS thread,
// so each Device owns a goroutine locked to its thread with the device's
// primary context current on it, and every CUDA call is a closure run
// there (Do). The device keeps one stream on which kernels and library
// calls are queued. It does not manage several contexts per device or
// multi-GPU peer access.
package cuda

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
)

// Device is one opened GPU. Its methods may be called from any goroutine.
type Device struct {
	Ordinal  int
	Name     string
	Major    int // compute capability
	Minor    int
	SMs      int
	TotalMem uint64
	VMM      bool // virtual memory management supported (attribute 102)
	PosixFD  bool // VMM POSIX file-descriptor handles supported (attribute 103)

	api    *driverAPI
	dev    int32
	ctx    uintptr
	stream uintptr

	work chan func()
	mu   sync.Mutex
	shut bool

	modMu sync.Mutex
	mods  map[string]*Module   // compiled kernel sources, by cache key
	fns   map[string]*Function // kernels by "file:name"
}

// ErrClosed is returned by calls on a closed Device.
var ErrClosed = errors.New("cuda: device is closed")

// Open opens GPU ordinal: retains its primary context on a dedicated,
// locked OS thread and creates the device's stream.
func Open(ordinal int) (*Device, error) {
	a, err := driver()
	if err != nil {
		return nil, err
	}
	d := &Device{Ordinal: ordinal, api: a, work: make(chan func()), mods: map[string]*Module{}}
	ready := make(chan error)
	go d.loop(ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	return d, nil
}

// loop is the device's worker: it owns one OS thread for its lifetime.
func (d *Device) loop(ready chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := d.init(); err != nil {
		ready <- err
		return
	}
	ready <- nil
	for fn := range d.work {
		fn()
	}
}

// init runs on the worker thread.
func (d *Device) init() error {
	a := d.api
	var n int32
	if err := check("cuDeviceGetCount", a.cuDeviceGetCount(&n)); err != nil {
		return err
	}
	if n == 0 {
		return ErrNoDevice
	}
	if d.Ordinal < 0 || d.Ordinal >= int(n) {
		return fmt.Errorf("cuda: device %d does not exist (%d found)", d.Ordinal, n)
	}
	if err := check("cuDeviceGet", a.cuDeviceGet(&d.dev, int32(d.Ordinal))); err != nil {
		return err
	}
	name := make([]byte, 256)
	if err := check("cuDeviceGetName", a.cuDeviceGetName(&name[0], int32(len(name)), d.dev)); err != nil {
		return err
	}
	d.Name = cStringBytes(name)
	attr := func(id int32) (int, error) {
		var v int32
		err := check("cuDeviceGetAttribute", a.cuDeviceGetAttribute(&v, id, d.dev))
		return int(v), err
	}
	var err error
	if d.Major, err = attr(attrComputeMajor); err != nil {
		return err
	}
	if d.Minor, err = attr(attrComputeMinor); err != nil {
		return err
	}
	if d.SMs, err = attr(attrMultiprocessorCount); err != nil {
		return err
	}
	vmm, _ := attr(attrVMMSupported)
	fd, _ := attr(attrPosixFDSupported)
	d.VMM, d.PosixFD = vmm == 1, fd == 1
	if err := check("cuDeviceTotalMem", a.cuDeviceTotalMem(&d.TotalMem, d.dev)); err != nil {
		return err
	}
	if err := check("cuDevicePrimaryCtxRetain", a.cuDevicePrimaryCtxRetain(&d.ctx, d.dev)); err != nil {
		return err
	}
	if err := check("cuCtxSetCurrent", a.cuCtxSetCurrent(d.ctx)); err != nil {
		return err
	}
	// Flags 0: a blocking stream, so synchronous copies order after it.
	return check("cuStreamCreate", a.cuStreamCreate(&d.stream, 0))
}

// Do runs fn on the device's thread (its context current) and returns
// fn's error. fn must not call Do itself (that would deadlock); the
// exported methods of Device, Buffer, Module and BLAS each call Do once.
func (d *Device) Do(fn func() error) error {
	d.mu.Lock()
	if d.shut {
		d.mu.Unlock()
		return ErrClosed
	}
	done := make(chan error, 1)
	d.work <- func() { done <- fn() }
	d.mu.Unlock()
	return <-done
}

// Stream returns the device's stream handle (for libraries bound here).
func (d *Device) Stream() uintptr { return d.stream }

// Synchronize waits until all work queued on the device's stream is done.
func (d *Device) Synchronize() error {
	return d.Do(func() error { return check("cuStreamSynchronize", d.api.cuStreamSynchronize(d.stream)) })
}

// MemInfo returns the free and total device memory in bytes.
func (d *Device) MemInfo() (free, total uint64, err error) {
	err = d.Do(func() error { return check("cuMemGetInfo", d.api.cuMemGetInfo(&free, &total)) })
	return free, total, err
}

// Close unloads the device's modules, destroys its stream, releases the
// primary context and stops its thread. Buffers must be freed before.
func (d *Device) Close() error {
	d.modMu.Lock()
	mods := d.mods
	d.mods, d.fns = map[string]*Module{}, nil
	d.modMu.Unlock()
	err := d.Do(func() error {
		var errs []error
		for _, m := range mods {
			errs = append(errs, check("cuModuleUnload", d.api.cuModuleUnload(m.h)))
		}
		errs = append(errs, check("cuStreamDestroy", d.api.cuStreamDestroy(d.stream)))
		errs = append(errs, check("cuDevicePrimaryCtxRelease", d.api.cuDevicePrimaryCtxRelease(d.dev)))
		return errors.Join(errs...)
	})
	d.mu.Lock()
	if !d.shut {
		d.shut = true
		close(d.work)
	}
	d.mu.Unlock()
	return err
}

// Arch returns the device's architecture as NVRTC names it ("sm_90").
func (d *Device) Arch() string { return fmt.Sprintf("sm_%d%d", d.Major, d.Minor) }

func (d *Device) String() string {
	return fmt.Sprintf("cuda:%d %s (sm_%d%d, %d SMs, %.1f GiB)", d.Ordinal, d.Name, d.Major, d.Minor, d.SMs, float64(d.TotalMem)/(1<<30))
}
