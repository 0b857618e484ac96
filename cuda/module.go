// module.go: loaded GPU code (cuModuleLoadData of a CUBIN or PTX image)
// and kernel launches on the device's stream. Launch arguments are packed
// into 8-byte slots held pinned for the call, which is what
// cuLaunchKernel reads (a pointer per argument). It does not support
// struct arguments or cooperative launches.
package cuda

import (
	"fmt"
	"math"
	"runtime"
	"unsafe"
)

// Module is GPU code loaded into a device's context.
type Module struct {
	dev *Device
	h   uintptr
}

// Function is one kernel of a Module.
type Function struct {
	mod  *Module
	h    uintptr
	Name string
}

// LoadModule loads a CUBIN or a NUL-terminated PTX image.
func (d *Device) LoadModule(image []byte) (*Module, error) {
	if len(image) == 0 {
		return nil, fmt.Errorf("cuda: LoadModule: empty image")
	}
	m := &Module{dev: d}
	err := d.Do(func() error {
		r := d.api.cuModuleLoadData(&m.h, unsafe.Pointer(&image[0]))
		runtime.KeepAlive(image)
		return check("cuModuleLoadData", r)
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// Function looks up the kernel called name (an extern "C" symbol).
func (m *Module) Function(name string) (*Function, error) {
	f := &Function{mod: m, Name: name}
	err := m.dev.Do(func() error {
		return check("cuModuleGetFunction("+name+")", m.dev.api.cuModuleGetFunction(&f.h, m.h, name))
	})
	if err != nil {
		return nil, err
	}
	return f, nil
}

// Dim3 is a grid or block size.
type Dim3 struct{ X, Y, Z uint32 }

// packArg turns one launch argument into an 8-byte slot holding its value
// in the leading bytes (little-endian), which is how the kernel reads a
// parameter of that size.
func packArg(a any) (uint64, error) {
	switch v := a.(type) {
	case *Buffer:
		if v == nil {
			return 0, nil
		}
		return v.Ptr, nil
	case uint64:
		return v, nil
	case int:
		if v < math.MinInt32 || v > math.MaxInt32 {
			return 0, fmt.Errorf("int argument %d does not fit a C int", v)
		}
		return uint64(uint32(int32(v))), nil
	case int32:
		return uint64(uint32(v)), nil
	case uint32:
		return uint64(v), nil
	case float32:
		return uint64(math.Float32bits(v)), nil
	case int64:
		return uint64(v), nil
	default:
		return 0, fmt.Errorf("unsupported argument type %T", a)
	}
}

// Launch queues f on the device's stream with grid x block threads and
// shmem bytes of dynamic shared memory. Arguments: *Buffer (device
// pointer; nil gives a null pointer), uint64 (raw device pointer), int /
// int32 (C int), uint32, int64, float32. It returns launch errors only;
// faults inside the kernel surface at the next synchronising call.
func (f *Function) Launch(grid, block Dim3, shmem int, args ...any) error {
	slots := make([]uint64, len(args))
	for i, a := range args {
		v, err := packArg(a)
		if err != nil {
			return fmt.Errorf("cuda: launch %s: argument %d: %w", f.Name, i, err)
		}
		slots[i] = v
	}
	ptrs := make([]unsafe.Pointer, len(args)+1)
	for i := range slots {
		ptrs[i] = unsafe.Pointer(&slots[i])
	}
	d := f.mod.dev
	g, b := grid.norm(), block.norm()
	return d.Do(func() error {
		var pin runtime.Pinner
		defer pin.Unpin()
		if len(slots) > 0 {
			pin.Pin(&slots[0])
		}
		pin.Pin(&ptrs[0])
		r := d.api.cuLaunchKernel(f.h, g.X, g.Y, g.Z, b.X, b.Y, b.Z, uint32(shmem), d.stream, unsafe.Pointer(&ptrs[0]), nil)
		return check("cuLaunchKernel("+f.Name+")", r)
	})
}

// norm turns zero dimensions into 1.
func (d Dim3) norm() Dim3 {
	return Dim3{max(d.X, 1), max(d.Y, 1), max(d.Z, 1)}
}
