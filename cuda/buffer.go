// buffer.go: device memory. A Buffer is one cuMemAlloc allocation (or a
// view into one) with typed host<->device copies, plus page-locking of
// host memory (RegisterHost). Copies to and from the host are synchronous:
// they first wait for the device's stream, so a download always sees every
// kernel queued before it. Async copies are in async.go, pinned staging
// in pinned.go and the arena allocator in arena.go.
package cuda

import (
	"fmt"
	"unsafe"
)

// Buffer is device memory: Ptr is the device address, Size its length in
// bytes. A view (Slice) shares its parent's memory and must not be freed.
type Buffer struct {
	dev  *Device
	Ptr  uint64
	Size int
	view bool
}

// Alloc allocates n bytes of device memory (contents undefined).
func (d *Device) Alloc(n int) (*Buffer, error) {
	if n <= 0 {
		return nil, fmt.Errorf("cuda: Alloc(%d): size must be positive", n)
	}
	b := &Buffer{dev: d, Size: n}
	err := d.Do(func() error {
		err := check(fmt.Sprintf("cuMemAlloc(%d bytes)", n), d.api.cuMemAlloc(&b.Ptr, uint64(n)))
		if e, ok := err.(*Error); ok && e.Code == resultOutOfMemory {
			oom := &OutOfMemoryError{Requested: uint64(n), Err: e}
			if d.api.cuMemGetInfo(&oom.Free, &oom.Total) != 0 {
				oom.Free, oom.Total = 0, d.TotalMem
			}
			return oom
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

// resultOutOfMemory is CUDA_ERROR_OUT_OF_MEMORY.
const resultOutOfMemory Result = 2

// OutOfMemoryError is a device allocation the GPU had no room for: the
// bytes asked for and the device's free and total memory right after the
// refusal. Callers add what was being allocated; errors.As finds it
// through their wrapping.
type OutOfMemoryError struct {
	Requested   uint64
	Free, Total uint64
	Err         *Error // the driver's CUDA_ERROR_OUT_OF_MEMORY
}

func (e *OutOfMemoryError) Error() string {
	return fmt.Sprintf("cuda: out of GPU memory: cuMemAlloc of %s refused with %s free of %s",
		FormatBytes(e.Requested), FormatBytes(e.Free), FormatBytes(e.Total))
}

// Unwrap gives the driver's error.
func (e *OutOfMemoryError) Unwrap() error { return e.Err }

// FormatBytes writes a byte count with its binary unit and the exact
// count ("12.5 MiB (13107200 bytes)").
func FormatBytes(n uint64) string {
	units := []string{"KiB", "MiB", "GiB", "TiB"}
	if n < 1024 {
		return fmt.Sprintf("%d bytes", n)
	}
	v, u := float64(n)/1024, 0
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	return fmt.Sprintf("%.1f %s (%d bytes)", v, units[u], n)
}

// Device returns the device owning b.
func (b *Buffer) Device() *Device { return b.dev }

// Free releases b's memory; a nil Buffer or a view is a no-op.
func (b *Buffer) Free() error {
	if b == nil || b.view || b.Ptr == 0 {
		return nil
	}
	p := b.Ptr
	b.Ptr = 0
	return b.dev.Do(func() error { return check("cuMemFree", b.dev.api.cuMemFree(p)) })
}

// Slice returns a view of bytes [off, off+n) of b.
func (b *Buffer) Slice(off, n int) (*Buffer, error) {
	if off < 0 || n <= 0 || off+n > b.Size {
		return nil, fmt.Errorf("cuda: Slice(%d, %d) out of range of a %d-byte buffer", off, n, b.Size)
	}
	return &Buffer{dev: b.dev, Ptr: b.Ptr + uint64(off), Size: n, view: true}, nil
}

// upload copies n bytes at src to b.
func (b *Buffer) upload(src unsafe.Pointer, n int) error {
	if n > b.Size {
		return fmt.Errorf("cuda: upload of %d bytes into a %d-byte buffer", n, b.Size)
	}
	if n == 0 {
		return nil
	}
	d := b.dev
	return d.Do(func() error {
		if err := check("cuStreamSynchronize", d.api.cuStreamSynchronize(d.stream)); err != nil {
			return err
		}
		return check("cuMemcpyHtoD", d.api.cuMemcpyHtoD(b.Ptr, src, uint64(n)))
	})
}

// download copies n bytes of b to dst after the device's stream is idle.
func (b *Buffer) download(dst unsafe.Pointer, n int) error {
	if n > b.Size {
		return fmt.Errorf("cuda: download of %d bytes from a %d-byte buffer", n, b.Size)
	}
	if n == 0 {
		return nil
	}
	d := b.dev
	return d.Do(func() error {
		if err := check("cuStreamSynchronize", d.api.cuStreamSynchronize(d.stream)); err != nil {
			return err
		}
		return check("cuMemcpyDtoH", d.api.cuMemcpyDtoH(dst, b.Ptr, uint64(n)))
	})
}

// UploadFloat32 copies src to the start of b.
func (b *Buffer) UploadFloat32(src []float32) error {
	if len(src) == 0 {
		return nil
	}
	return b.upload(unsafe.Pointer(&src[0]), 4*len(src))
}

// DownloadFloat32 copies the first len(dst) float32s of b into dst.
func (b *Buffer) DownloadFloat32(dst []float32) error {
	if len(dst) == 0 {
		return nil
	}
	return b.download(unsafe.Pointer(&dst[0]), 4*len(dst))
}

// UploadUint16 copies src (e.g. fp16 bit patterns) to the start of b.
func (b *Buffer) UploadUint16(src []uint16) error {
	if len(src) == 0 {
		return nil
	}
	return b.upload(unsafe.Pointer(&src[0]), 2*len(src))
}

// DownloadUint16 copies the first len(dst) uint16s of b into dst.
func (b *Buffer) DownloadUint16(dst []uint16) error {
	if len(dst) == 0 {
		return nil
	}
	return b.download(unsafe.Pointer(&dst[0]), 2*len(dst))
}

// UploadBytes copies src to the start of b.
func (b *Buffer) UploadBytes(src []byte) error {
	if len(src) == 0 {
		return nil
	}
	return b.upload(unsafe.Pointer(&src[0]), len(src))
}

// DownloadBytes copies the first len(dst) bytes of b into dst.
func (b *Buffer) DownloadBytes(dst []byte) error {
	if len(dst) == 0 {
		return nil
	}
	return b.download(unsafe.Pointer(&dst[0]), len(dst))
}

// FillUint32 sets the first n 32-bit words of b to v (e.g. a float32's
// bits, to poison an output before a kernel writes it).
func (b *Buffer) FillUint32(v uint32, n int) error {
	if 4*n > b.Size {
		return fmt.Errorf("cuda: fill of %d words in a %d-byte buffer", n, b.Size)
	}
	d := b.dev
	return d.Do(func() error {
		if err := check("cuStreamSynchronize", d.api.cuStreamSynchronize(d.stream)); err != nil {
			return err
		}
		return check("cuMemsetD32", d.api.cuMemsetD32(b.Ptr, v, uint64(n)))
	})
}

// Zero sets all of b to zero bytes.
func (b *Buffer) Zero() error {
	d := b.dev
	return d.Do(func() error {
		if err := check("cuStreamSynchronize", d.api.cuStreamSynchronize(d.stream)); err != nil {
			return err
		}
		return check("cuMemsetD8", d.api.cuMemsetD8(b.Ptr, 0, uint64(b.Size)))
	})
}

// RegisterHost page-locks host memory p (e.g. an mmap'd checkpoint or a
// staging slice) so copies from it run at full PCIe speed; call the
// returned function to unregister before p is unmapped or freed.
func (d *Device) RegisterHost(p []byte) (func() error, error) {
	if d.api.cuMemHostRegister == nil || d.api.cuMemHostUnregister == nil {
		return nil, fmt.Errorf("cuda: this driver has no cuMemHostRegister")
	}
	if len(p) == 0 {
		return nil, fmt.Errorf("cuda: RegisterHost of an empty slice")
	}
	ptr := unsafe.Pointer(&p[0])
	err := d.Do(func() error { return check("cuMemHostRegister", d.api.cuMemHostRegister(ptr, uint64(len(p)), 0)) })
	if err != nil {
		return nil, err
	}
	return func() error {
		return d.Do(func() error { return check("cuMemHostUnregister", d.api.cuMemHostUnregister(ptr)) })
	}, nil
}

// CopyFrom copies n bytes from src to b on the device.
func (b *Buffer) CopyFrom(src *Buffer, n int) error {
	if n > b.Size || n > src.Size {
		return fmt.Errorf("cuda: device copy of %d bytes between buffers of %d and %d bytes", n, src.Size, b.Size)
	}
	d := b.dev
	return d.Do(func() error {
		if err := check("cuStreamSynchronize", d.api.cuStreamSynchronize(d.stream)); err != nil {
			return err
		}
		return check("cuMemcpyDtoD", d.api.cuMemcpyDtoD(b.Ptr, src.Ptr, uint64(n)))
	})
}
