// cuda_tensor.go: the nn compute engine on an NVIDIA GPU, part 1: the GPU
// handle (device + cuBLAS) and GPUTensor, a dense row-major float32 array
// in device memory with the same PyTorch-order shapes as Tensor, plus
// upload and download. This is the correctness-first path: fp32 storage,
// one allocation per tensor, every op queued on the device's one stream.
// It does not do fp16 storage, an arena allocator or CUDA graphs yet, and
// it does not change the CPU Tensor (the two types are converted
// explicitly with Upload / Download).
package nn

import (
	"fmt"
	"slices"

	"github.com/sdbridge/sdbridge/cuda"
)

// GPU is one CUDA device with a cuBLAS handle, the target of the GPU ops.
type GPU struct {
	Dev  *cuda.Device
	BLAS *cuda.BLAS
	// Poison makes Empty fill new tensors with NaN, so a check can tell an
	// element no kernel wrote (costs one memset per tensor).
	Poison bool
}

// OpenGPU opens CUDA device ordinal and its cuBLAS handle. Without a
// driver it returns cuda.ErrNoDriver (wrapped), which says to use the CPU.
func OpenGPU(ordinal int) (*GPU, error) {
	d, err := cuda.Open(ordinal)
	if err != nil {
		return nil, err
	}
	b, err := d.NewBLAS()
	if err != nil {
		d.Close()
		return nil, err
	}
	return &GPU{Dev: d, BLAS: b}, nil
}

// Close releases cuBLAS and the device (free GPUTensors first).
func (g *GPU) Close() error {
	err := g.BLAS.Close()
	if cerr := g.Dev.Close(); err == nil {
		err = cerr
	}
	return err
}

// GPUTensor is a dense row-major float32 tensor in device memory.
type GPUTensor struct {
	Shape []int
	Buf   *cuda.Buffer
}

// Numel returns the number of elements.
func (t *GPUTensor) Numel() int { return numel(t.Shape) }

// Free releases the tensor's memory (a view's Free is a no-op).
func (t *GPUTensor) Free() error {
	if t == nil {
		return nil
	}
	return t.Buf.Free()
}

// Reshape returns a view with another shape of the same size.
func (t *GPUTensor) Reshape(shape ...int) (*GPUTensor, error) {
	if numel(shape) != t.Numel() {
		return nil, fmt.Errorf("nn: cuda reshape %v to %v changes the size", t.Shape, shape)
	}
	v, err := t.Buf.Slice(0, 4*t.Numel())
	if err != nil {
		return nil, err
	}
	return &GPUTensor{Shape: slices.Clone(shape), Buf: v}, nil
}

// offset returns a view of elements [off, off+n) as a raw buffer.
func (t *GPUTensor) offset(off, n int) (*cuda.Buffer, error) {
	return t.Buf.Slice(4*off, 4*n)
}

// Empty allocates an uninitialised tensor.
func (g *GPU) Empty(shape ...int) (*GPUTensor, error) {
	n := numel(shape)
	if n <= 0 {
		return nil, fmt.Errorf("nn: cuda tensor of shape %v is empty", shape)
	}
	b, err := g.Dev.Alloc(4 * n)
	if err != nil {
		return nil, fmt.Errorf("nn: cuda tensor %v: %w", shape, err)
	}
	if g.Poison {
		if err := b.FillUint32(0x7fc00000, n); err != nil { // quiet NaN
			b.Free()
			return nil, err
		}
	}
	return &GPUTensor{Shape: slices.Clone(shape), Buf: b}, nil
}

// Upload copies a CPU tensor to the device.
func (g *GPU) Upload(t *Tensor) (*GPUTensor, error) {
	d, err := g.Empty(t.Shape...)
	if err != nil {
		return nil, err
	}
	if err := d.Buf.UploadFloat32(t.Data[:t.Numel()]); err != nil {
		d.Free()
		return nil, err
	}
	return d, nil
}

// UploadOptional is Upload that maps nil to nil (optional weights).
func (g *GPU) UploadOptional(t *Tensor) (*GPUTensor, error) {
	if t == nil {
		return nil, nil
	}
	return g.Upload(t)
}

// Download copies the tensor to a new CPU tensor (waiting for queued work).
func (t *GPUTensor) Download() (*Tensor, error) {
	out := New(t.Shape...)
	if err := t.Buf.DownloadFloat32(out.Data); err != nil {
		return nil, err
	}
	return out, nil
}
