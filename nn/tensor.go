// Package nn is the compute engine: a Tensor type and the kernels and layers
// the models are built from.
//
// Tensors are dense, contiguous and row-major, with shapes in PyTorch order
// (outermost first). The CPU path computes in float32; CUDA joins later
// through the Device field. Layers are structs of weights plus Forward.
package nn

import (
	"fmt"
	"slices"
)

// Device says where a tensor's storage lives.
type Device uint8

const (
	CPU Device = iota
	CUDA
)

func (d Device) String() string {
	if d == CUDA {
		return "cuda"
	}
	return "cpu"
}

// Tensor is a dense float32 array. Data is shared by views made with Reshape.
type Tensor struct {
	Shape  []int
	Data   []float32
	Device Device
}

// New returns a zero tensor of the given shape.
func New(shape ...int) *Tensor {
	return &Tensor{Shape: slices.Clone(shape), Data: make([]float32, numel(shape))}
}

// From wraps data (not copied) with a shape; it panics if the sizes disagree.
func From(data []float32, shape ...int) *Tensor {
	if numel(shape) != len(data) {
		panic(fmt.Sprintf("nn.From: shape %v needs %d values, got %d", shape, numel(shape), len(data)))
	}
	return &Tensor{Shape: slices.Clone(shape), Data: data}
}

func numel(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// Numel is the number of elements.
func (t *Tensor) Numel() int { return numel(t.Shape) }

// Dim returns dimension i; negative i counts from the end.
func (t *Tensor) Dim(i int) int {
	if i < 0 {
		i += len(t.Shape)
	}
	return t.Shape[i]
}

// Reshape returns a view with a new shape; one dimension may be -1.
func (t *Tensor) Reshape(shape ...int) *Tensor {
	shape = slices.Clone(shape)
	infer, known := -1, 1
	for i, d := range shape {
		if d == -1 {
			infer = i
		} else {
			known *= d
		}
	}
	if infer >= 0 {
		shape[infer] = len(t.Data) / known
	}
	if numel(shape) != len(t.Data) {
		panic(fmt.Sprintf("nn.Reshape: %v -> %v changes the size", t.Shape, shape))
	}
	return &Tensor{Shape: shape, Data: t.Data, Device: t.Device}
}

// Clone returns a deep copy.
func (t *Tensor) Clone() *Tensor {
	return &Tensor{Shape: slices.Clone(t.Shape), Data: slices.Clone(t.Data), Device: t.Device}
}

func (t *Tensor) String() string { return fmt.Sprintf("Tensor%v", t.Shape) }
