// tensor.go: tensor descriptors (TensorRef, TensorInfo), dtypes, and the
// plugin-side view of a granted tensor (Tensor), in host memory or, for a
// device arena, on a CUDA device (device.go). It does not allocate arenas
// (host) or receive them (arenas.go).
package sdk

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/sdbridge/sdbridge/cuda"
)

// DType is the element type of a tensor in an arena.
type DType string

// The dtypes the protocol carries.
const (
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
	I64  DType = "I64"
)

// Size is the size of one element in bytes, or 0 for an unknown dtype.
func (d DType) Size() int {
	switch d {
	case F32:
		return 4
	case F16, BF16:
		return 2
	case I64:
		return 8
	}
	return 0
}

// TensorRef describes a dense row-major tensor inside an arena. Shape is in
// PyTorch (outermost-first) order.
type TensorRef struct {
	Name     string
	Arena    uint32
	Offset   uint64 // bytes from the start of the arena
	DType    DType
	Shape    []int
	Writable bool // the plugin may write it during this call
}

// TensorInfo names a tensor and its layout without granting access.
type TensorInfo struct {
	Name  string
	DType DType
	Shape []int
}

// Numel is the number of elements described by shape (1 for a scalar), or
// -1 if a dimension is negative or the product overflows.
func Numel(shape []int) int {
	n := 1
	for _, d := range shape {
		if d < 0 || (d > 0 && n > (1<<50)/d) {
			return -1
		}
		n *= d
	}
	return n
}

// ByteLen is the size of the referenced bytes, or an error for an unknown
// dtype or an invalid shape.
func (r TensorRef) ByteLen() (uint64, error) {
	es := r.DType.Size()
	if es == 0 {
		return 0, fmt.Errorf("tensor %q: unknown dtype %q", r.Name, r.DType)
	}
	n := Numel(r.Shape)
	if n < 0 {
		return 0, fmt.Errorf("tensor %q: invalid shape %v", r.Name, r.Shape)
	}
	return uint64(n) * uint64(es), nil
}

// CheckBounds reports whether the ref lies inside an arena of arenaSize bytes
// and is aligned for its dtype.
func (r TensorRef) CheckBounds(arenaSize uint64) error {
	n, err := r.ByteLen()
	if err != nil {
		return err
	}
	if r.Offset > arenaSize || n > arenaSize-r.Offset {
		return fmt.Errorf("tensor %q: bytes [%d, %d+%d) outside arena %d of %d bytes", r.Name, r.Offset, r.Offset, n, r.Arena, arenaSize)
	}
	if r.Offset%uint64(r.DType.Size()) != 0 {
		return fmt.Errorf("tensor %q: offset %d not aligned for %s", r.Name, r.Offset, r.DType)
	}
	return nil
}

// Info drops the location of a ref.
func (r TensorRef) Info() TensorInfo { return TensorInfo{Name: r.Name, DType: r.DType, Shape: r.Shape} }

// ErrReadOnly is returned when a plugin asks to write a tensor it was not
// granted write access to.
var ErrReadOnly = errors.New("tensor not granted writable for this call")

// Tensor is a TensorRef bound to the bytes it describes. On the plugin side
// the SDK binds every ref of a request to the mapped arena; on the host side
// requests carry unbound Tensors (only TensorRef set).
type Tensor struct {
	TensorRef
	data []byte
	dev  *cuda.Buffer // set instead of data in a device arena (device.go)
}

// BindTensor binds ref to the arena mapping mem (ref.Offset is relative to
// mem[0]). It checks bounds and alignment.
func BindTensor(ref TensorRef, mem []byte) (*Tensor, error) {
	if err := ref.CheckBounds(uint64(len(mem))); err != nil {
		return nil, err
	}
	n, _ := ref.ByteLen()
	return &Tensor{TensorRef: ref, data: mem[ref.Offset : ref.Offset+n : ref.Offset+n]}, nil
}

// Ref makes an unbound Tensor from a ref (host side).
func Ref(ref TensorRef) *Tensor { return &Tensor{TensorRef: ref} }

// Bound reports whether the tensor is bound to memory.
func (t *Tensor) Bound() bool {
	return t != nil && (t.data != nil || t.dev != nil || Numel(t.Shape) == 0)
}

// Numel is the number of elements.
func (t *Tensor) Numel() int { return Numel(t.Shape) }

// Bytes is a view of the tensor's bytes (nil for a device tensor: use
// DeviceBuffer). Writing it is allowed only when Writable; read-only arenas
// are mapped PROT_READ and a write faults.
func (t *Tensor) Bytes() []byte { return t.data }

// Float32 is a read view of an F32 tensor.
func (t *Tensor) Float32() ([]float32, error) {
	if t.DType != F32 {
		return nil, fmt.Errorf("tensor %q is %s, not F32", t.Name, t.DType)
	}
	if len(t.data) == 0 {
		if t.dev != nil {
			return nil, fmt.Errorf("tensor %q: %w", t.Name, ErrOnDevice)
		}
		if t.data == nil && t.Numel() != 0 {
			return nil, fmt.Errorf("tensor %q is not bound to an arena", t.Name)
		}
		return []float32{}, nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&t.data[0])), len(t.data)/4), nil
}

// MutableFloat32 is a writable view of an F32 tensor granted writable.
func (t *Tensor) MutableFloat32() ([]float32, error) {
	if !t.Writable {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, ErrReadOnly)
	}
	return t.Float32()
}

// Uint16 is a read view of an F16 or BF16 tensor's raw bits.
func (t *Tensor) Uint16() ([]uint16, error) {
	if t.DType != F16 && t.DType != BF16 {
		return nil, fmt.Errorf("tensor %q is %s, not F16/BF16", t.Name, t.DType)
	}
	if t.dev != nil {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, ErrOnDevice)
	}
	if len(t.data) == 0 {
		return []uint16{}, nil
	}
	return unsafe.Slice((*uint16)(unsafe.Pointer(&t.data[0])), len(t.data)/2), nil
}

// Find returns the tensor called name, or nil.
func Find(ts []*Tensor, name string) *Tensor {
	for _, t := range ts {
		if t != nil && t.Name == name {
			return t
		}
	}
	return nil
}

// Refs returns the refs of ts (to report what was written).
func Refs(ts ...*Tensor) []TensorRef {
	out := make([]TensorRef, 0, len(ts))
	for _, t := range ts {
		out = append(out, t.TensorRef)
	}
	return out
}
