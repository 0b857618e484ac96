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
		return check(fmt.Sprintf("cuMemAlloc(%d bytes)", n), d.api.cuMemAlloc(&b.Ptr, uint64(n)))
	})
	if err != nil {
		return nil, err
	}
	return b, nil
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
