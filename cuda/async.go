// async.go: copies and fills queued on the device's stream without waiting
// (cuMemcpy*Async_v2, cuMemsetD*Async). They are ordered with the kernels
// on the same stream, so a device-to-device copy or a fill needs no
// synchronisation at all, and all of them can be captured into a graph.
// Host-side copies take pinned memory only (HostBuffer): the host bytes
// must stay put until the stream has passed the copy, which a Go slice
// does not promise; for a plain []byte use a Stager (pinned.go). Reading a
// download's HostBuffer needs Device.Synchronize or an Event first. It
// does not manage several streams.
package cuda

import (
	"fmt"
	"unsafe"
)

// CopyFromAsync queues a copy of the first n bytes of src to the start of
// b on the device's stream.
func (b *Buffer) CopyFromAsync(src *Buffer, n int) error {
	if n < 0 || n > b.Size || n > src.Size {
		return fmt.Errorf("cuda: async device copy of %d bytes between buffers of %d and %d bytes", n, src.Size, b.Size)
	}
	if n == 0 {
		return nil
	}
	d := b.dev
	if err := need(d.api, "cuMemcpyDtoDAsync_v2"); err != nil {
		return err
	}
	return d.Do(func() error {
		return check("cuMemcpyDtoDAsync", d.api.cuMemcpyDtoDAsync(b.Ptr, src.Ptr, uint64(n), d.stream))
	})
}

// ZeroAsync queues setting all of b to zero bytes.
func (b *Buffer) ZeroAsync() error {
	d := b.dev
	if err := need(d.api, "cuMemsetD8Async"); err != nil {
		return err
	}
	return d.Do(func() error {
		return check("cuMemsetD8Async", d.api.cuMemsetD8Async(b.Ptr, 0, uint64(b.Size), d.stream))
	})
}

// FillUint32Async queues setting the first n 32-bit words of b to v (a
// float32's bits, or two fp16 values).
func (b *Buffer) FillUint32Async(v uint32, n int) error {
	if n < 0 || 4*n > b.Size {
		return fmt.Errorf("cuda: async fill of %d words in a %d-byte buffer", n, b.Size)
	}
	if n == 0 {
		return nil
	}
	d := b.dev
	if err := need(d.api, "cuMemsetD32Async"); err != nil {
		return err
	}
	return d.Do(func() error {
		return check("cuMemsetD32Async", d.api.cuMemsetD32Async(b.Ptr, v, uint64(n), d.stream))
	})
}

// UploadAsync queues a copy of n bytes of pinned host memory, from byte
// off of src, to the start of b. src must not be changed or freed before
// the stream passes the copy (HostBuffer.Free waits for that).
func (b *Buffer) UploadAsync(src *HostBuffer, off, n int) error {
	if err := src.check(off, n); err != nil {
		return fmt.Errorf("cuda: UploadAsync: %w", err)
	}
	if n > b.Size {
		return fmt.Errorf("cuda: UploadAsync of %d bytes into a %d-byte buffer", n, b.Size)
	}
	if n == 0 {
		return nil
	}
	d := b.dev
	if err := need(d.api, "cuMemcpyHtoDAsync_v2"); err != nil {
		return err
	}
	p := unsafe.Add(src.p, off)
	return d.Do(func() error {
		return check("cuMemcpyHtoDAsync", d.api.cuMemcpyHtoDAsync(b.Ptr, p, uint64(n), d.stream))
	})
}

// DownloadAsync queues a copy of the first n bytes of b into pinned host
// memory at byte off of dst. The bytes are there once the stream has
// passed the copy (Device.Synchronize, or an Event recorded after it).
func (b *Buffer) DownloadAsync(dst *HostBuffer, off, n int) error {
	if err := dst.check(off, n); err != nil {
		return fmt.Errorf("cuda: DownloadAsync: %w", err)
	}
	if n > b.Size {
		return fmt.Errorf("cuda: DownloadAsync of %d bytes from a %d-byte buffer", n, b.Size)
	}
	if n == 0 {
		return nil
	}
	d := b.dev
	if err := need(d.api, "cuMemcpyDtoHAsync_v2"); err != nil {
		return err
	}
	p := unsafe.Add(dst.p, off)
	return d.Do(func() error {
		return check("cuMemcpyDtoHAsync", d.api.cuMemcpyDtoHAsync(p, b.Ptr, uint64(n), d.stream))
	})
}
