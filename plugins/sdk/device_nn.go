// device_nn.go: device tensors as nn.GPUTensor views, so a plugin hands the
// host's device memory straight to nn's GPU ops (and models' *_cuda types)
// without copies. It does not allocate, convert dtypes or free.
package sdk

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// GPUDType maps a protocol dtype to nn's GPU storage dtype (F32 or F16).
func GPUDType(d DType) (nn.GPUDType, error) {
	switch d {
	case F32:
		return nn.GPUF32, nil
	case F16:
		return nn.GPUF16, nil
	}
	return 0, fmt.Errorf("dtype %s has no GPU storage type (want F32 or F16)", d)
}

// GPUTensor is a read view of a device tensor as an nn.GPUTensor (same
// shape, dtype F32 or F16). Its Free is a no-op (a view).
func (t *Tensor) GPUTensor() (*nn.GPUTensor, error) {
	b, err := t.DeviceBuffer()
	if err != nil {
		return nil, err
	}
	dt, err := GPUDType(t.DType)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	return &nn.GPUTensor{Shape: append([]int(nil), t.Shape...), DType: dt, Buf: b}, nil
}

// MutableGPUTensor is GPUTensor for a tensor granted writable.
func (t *Tensor) MutableGPUTensor() (*nn.GPUTensor, error) {
	if !t.Writable {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, ErrReadOnly)
	}
	return t.GPUTensor()
}
