// cuda_tensor.go: the nn compute engine on an NVIDIA GPU, part 1: the GPU
// handle (device + cuBLAS + activation dtype) and GPUTensor, a dense
// row-major array of float32 or IEEE half elements in device memory with
// the same PyTorch-order shapes as Tensor, plus upload and download
// (converting between the CPU's float32 and the tensor's dtype, rounding
// to nearest even). fp16 storage always comes with fp32 arithmetic inside
// the kernels and GEMMs. One allocation per tensor, every op queued on
// the device's one stream. It does not do CUDA graphs or bf16, and it
// does not change the CPU Tensor (the two are converted explicitly with
// Upload / Download).
package nn

import (
	"errors"
	"fmt"
	"slices"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/safetensors"
)

// GPUDType is the element type of a GPUTensor. The zero value is GPUF32.
type GPUDType uint8

const (
	// GPUF32 stores float32 (exactness checks: GPU == CPU to ~1e-6).
	GPUF32 GPUDType = iota
	// GPUF16 stores IEEE binary16 with fp32 arithmetic (real runs).
	GPUF16
)

// Size returns the element size in bytes.
func (d GPUDType) Size() int {
	if d == GPUF16 {
		return 2
	}
	return 4
}

func (d GPUDType) String() string {
	if d == GPUF16 {
		return "f16"
	}
	return "f32"
}

// kernel returns the name of base's instantiation for d ("silu_f16").
func (d GPUDType) kernel(base string) string { return base + "_" + d.String() }

// blas returns d's cuBLAS data type.
func (d GPUDType) blas() cuda.DataType {
	if d == GPUF16 {
		return cuda.R16F
	}
	return cuda.R32F
}

// GPU is one CUDA device with a cuBLAS handle, the target of the GPU ops.
type GPU struct {
	Dev  *cuda.Device
	BLAS *cuda.BLAS
	// DType is the element type of the tensors the ops create and of
	// uploaded weights: GPUF32 (the zero value) or GPUF16.
	DType GPUDType
	// Lt, when set, runs Linear layers through cuBLASLt with the bias
	// added in the GEMM's epilogue (no separate bias pass).
	Lt *cuda.Lt
	// Arena, when set, is where Empty takes device memory (a pool: no
	// driver call per tensor); GPUTensor.Free gives it back.
	Arena *cuda.Arena
	// Poison makes Empty fill new tensors with NaN, so a check can tell an
	// element no kernel wrote (costs one memset per tensor).
	Poison bool
	// ConvAlgo picks how fp16 convolutions run (ConvIm2col, the zero
	// value: im2col + cuBLAS; ConvImplicitGEMM: the tensor-core kernel
	// without the im2col buffer). fp32 always uses im2col.
	ConvAlgo ConvAlgo
}

// OpenGPU opens CUDA device ordinal and its cuBLAS handle, with fp32
// tensors (set DType to GPUF16 for fp16 storage), tensors allocated from
// a device arena, and cuBLASLt for Linear layers when that library loads
// (it is optional: without it Linear uses cuBLAS plus a bias kernel).
// Without a driver it returns cuda.ErrNoDriver (wrapped), which says to
// use the CPU.
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
	g := &GPU{Dev: d, BLAS: b, Arena: d.NewArena(cuda.ArenaOptions{Name: "nn tensors"})}
	if lt, err := d.NewLt(); err == nil {
		g.Lt = lt
	}
	return g, nil
}

// WithDType returns a handle sharing g's device, cuBLAS, cuBLASLt, arena
// and settings whose ops create tensors of dtype dt (g itself when it
// already has it). The view is a snapshot of g's fields: take a new one
// after changing g. Close only g, never a view.
func (g *GPU) WithDType(dt GPUDType) *GPU {
	if g.DType == dt {
		return g
	}
	v := *g
	v.DType = dt
	return &v
}

// Close releases cuBLASLt, the arena, cuBLAS and the device (free
// GPUTensors first; tensors from the arena are invalid afterwards).
func (g *GPU) Close() error {
	var errs []error
	if g.Lt != nil {
		errs = append(errs, g.Lt.Close())
	}
	if g.Arena != nil {
		errs = append(errs, g.Arena.Close())
	}
	if g.BLAS != nil {
		errs = append(errs, g.BLAS.Close())
	}
	errs = append(errs, g.Dev.Close())
	return errors.Join(errs...)
}

// GPUTensor is a dense row-major tensor in device memory.
type GPUTensor struct {
	Shape []int
	DType GPUDType
	Buf   *cuda.Buffer

	arena *cuda.Arena // where Buf came from, or nil (cuMemAlloc or a view)
}

// Numel returns the number of elements.
func (t *GPUTensor) Numel() int { return numel(t.Shape) }

// Bytes returns the size of the elements in bytes.
func (t *GPUTensor) Bytes() int { return t.Numel() * t.DType.Size() }

// Free releases the tensor's memory (a view's Free is a no-op).
func (t *GPUTensor) Free() error {
	if t == nil {
		return nil
	}
	if t.arena != nil {
		a := t.arena
		t.arena = nil
		return a.Free(t.Buf)
	}
	return t.Buf.Free()
}

// Reshape returns a view with another shape of the same size.
func (t *GPUTensor) Reshape(shape ...int) (*GPUTensor, error) {
	if numel(shape) != t.Numel() {
		return nil, fmt.Errorf("nn: cuda reshape %v to %v changes the size", t.Shape, shape)
	}
	v, err := t.Buf.Slice(0, t.Bytes())
	if err != nil {
		return nil, err
	}
	return &GPUTensor{Shape: slices.Clone(shape), DType: t.DType, Buf: v}, nil
}

// View returns elements [off, off+numel(shape)) as a tensor of shape (a
// view: Free is a no-op, the memory stays t's).
func (t *GPUTensor) View(off int, shape ...int) (*GPUTensor, error) {
	n := numel(shape)
	if off < 0 || off+n > t.Numel() {
		return nil, fmt.Errorf("nn: cuda view [%d, %d) of a tensor of %v", off, off+n, t.Shape)
	}
	b, err := t.offset(off, n)
	if err != nil {
		return nil, err
	}
	return &GPUTensor{Shape: slices.Clone(shape), DType: t.DType, Buf: b}, nil
}

// offset returns a view of elements [off, off+n) as a raw buffer.
func (t *GPUTensor) offset(off, n int) (*cuda.Buffer, error) {
	s := t.DType.Size()
	return t.Buf.Slice(s*off, s*n)
}

// Empty allocates an uninitialised tensor of the GPU's dtype.
func (g *GPU) Empty(shape ...int) (*GPUTensor, error) { return g.EmptyOf(g.DType, shape...) }

// EmptyOf allocates an uninitialised tensor of dtype dt.
func (g *GPU) EmptyOf(dt GPUDType, shape ...int) (*GPUTensor, error) {
	n := numel(shape)
	if n <= 0 {
		return nil, fmt.Errorf("nn: cuda tensor of shape %v is empty", shape)
	}
	// Whole 4-byte words, so an odd-length fp16 tensor can be poisoned.
	size := (n*dt.Size() + 3) &^ 3
	var b *cuda.Buffer
	var err error
	if g.Arena != nil {
		b, err = g.Arena.Alloc(size)
	} else {
		b, err = g.Dev.Alloc(size)
	}
	if err != nil {
		return nil, fmt.Errorf("nn: cuda %s tensor %v: %w", dt, shape, err)
	}
	free := func() {
		if g.Arena != nil {
			g.Arena.Free(b)
		} else {
			b.Free()
		}
	}
	if g.Poison {
		word, words := uint32(0x7fc00000), n // quiet NaN
		if dt == GPUF16 {
			word, words = 0x7e007e00, (n+1)/2
		}
		if err := b.FillUint32(word, words); err != nil {
			free()
			return nil, err
		}
	}
	return &GPUTensor{Shape: slices.Clone(shape), DType: dt, Buf: b, arena: g.Arena}, nil
}

// Upload copies a CPU tensor to the device in the GPU's dtype.
func (g *GPU) Upload(t *Tensor) (*GPUTensor, error) { return g.UploadAs(t, g.DType) }

// UploadAs copies a CPU tensor to the device as dtype dt (fp16 rounds to
// nearest even; beyond ±65504 gives ±Inf).
func (g *GPU) UploadAs(t *Tensor, dt GPUDType) (*GPUTensor, error) {
	d, err := g.EmptyOf(dt, t.Shape...)
	if err != nil {
		return nil, err
	}
	if err := d.Set(t); err != nil {
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

// Set overwrites the device tensor with src (same number of elements),
// converting to the tensor's dtype.
func (t *GPUTensor) Set(src *Tensor) error {
	n := t.Numel()
	if src.Numel() != n {
		return fmt.Errorf("nn: cuda Set of %v from a CPU tensor %v", t.Shape, src.Shape)
	}
	if t.DType == GPUF16 {
		return t.Buf.UploadUint16(toHalves(src.Data[:n]))
	}
	return t.Buf.UploadFloat32(src.Data[:n])
}

// Download copies the tensor to a new CPU tensor (waiting for queued work).
func (t *GPUTensor) Download() (*Tensor, error) {
	out := New(t.Shape...)
	if t.DType == GPUF16 {
		h := make([]uint16, t.Numel())
		if err := t.Buf.DownloadUint16(h); err != nil {
			return nil, err
		}
		fromHalves(out.Data, h)
		return out, nil
	}
	if err := t.Buf.DownloadFloat32(out.Data); err != nil {
		return nil, err
	}
	return out, nil
}

// toHalves rounds src to IEEE halves (nearest even), in parallel.
func toHalves(src []float32) []uint16 {
	h := make([]uint16, len(src))
	parallelFor(len(src), 4, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			h[i] = safetensors.F32ToF16(src[i])
		}
	})
	return h
}

// fromHalves widens halves into dst, in parallel.
func fromHalves(dst []float32, h []uint16) {
	parallelFor(len(h), 2, func(lo, hi int) { safetensors.F16ToF32(dst[lo:hi], h[lo:hi]) })
}
