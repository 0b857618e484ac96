// pinned.go: page-locked ("pinned") host memory and uploads through it.
// Copies from pinned memory run by DMA at full PCIe speed and can be
// queued without waiting; copies from ordinary pageable memory cannot.
//
//   - Device.AllocHost: pinned memory from the driver (cuMemHostAlloc).
//   - Device.PinHost: page-locks memory that already exists, typically an
//     mmap'd checkpoint (cuMemHostRegister_v2; read-only for a PROT_READ
//     mapping), so its tensors upload straight from the page cache.
//   - Stager: a ring of pinned chunks that uploads any []byte / []uint16 /
//     []float32 in pieces: the host copies chunk i+1 into the next slot
//     while the GPU pulls chunk i; a slot is reused once its event says
//     the GPU is done with it. Sources inside a PinHost/AllocHost region
//     skip the ring and are copied directly.
//
// Which to use: registering faults in and locks every page of the range
// first, so for a one-shot load of a cold checkpoint the Stager is the
// safer choice (platform.md §4 measured pinned 55 GB/s vs pageable 8.6
// GB/s on an H200; performance.md §6 cites direct-from-mmap uploads as
// 1.2–11x slower); PinHost pays off for memory uploaded again and again
// (the host copies a LoRA restore reads). Neither is measured here yet.
//
// Stager uploads cannot be captured into a graph (the host-side copy would
// not replay). It does not allocate write-combined or mapped (zero-copy)
// memory, and it does not download through the ring (use DownloadAsync).
package cuda

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

// cuMemHostRegister flags (cuda.h).
const (
	hostRegisterReadOnly = 8 // CU_MEMHOSTREGISTER_READ_ONLY
)

// HostBuffer is pinned host memory: allocated by the driver (AllocHost) or
// existing memory page-locked in place (PinHost).
type HostBuffer struct {
	dev        *Device
	p          unsafe.Pointer
	Size       int
	registered bool   // PinHost: unregister, not free
	keep       []byte // PinHost: the slice, kept reachable while pinned
}

// regions lists, per device, the live HostBuffers (for Stager's direct path).
var regions struct {
	sync.Mutex
	m map[*Device][]*HostBuffer
}

func addRegion(h *HostBuffer) {
	regions.Lock()
	defer regions.Unlock()
	if regions.m == nil {
		regions.m = map[*Device][]*HostBuffer{}
	}
	regions.m[h.dev] = append(regions.m[h.dev], h)
}

func removeRegion(h *HostBuffer) {
	regions.Lock()
	defer regions.Unlock()
	l := regions.m[h.dev]
	for i, r := range l {
		if r == h {
			regions.m[h.dev] = append(l[:i:i], l[i+1:]...)
			return
		}
	}
}

// pinnedAt returns the live HostBuffer of d that holds all n bytes at p.
func pinnedAt(d *Device, p unsafe.Pointer, n int) *HostBuffer {
	regions.Lock()
	defer regions.Unlock()
	a := uintptr(p)
	for _, r := range regions.m[d] {
		lo := uintptr(r.p)
		if a >= lo && a+uintptr(n) <= lo+uintptr(r.Size) {
			return r
		}
	}
	return nil
}

// AllocHost allocates n bytes of pinned host memory.
func (d *Device) AllocHost(n int) (*HostBuffer, error) {
	if n <= 0 {
		return nil, fmt.Errorf("cuda: AllocHost(%d): size must be positive", n)
	}
	if err := need(d.api, "cuMemHostAlloc", "cuMemFreeHost"); err != nil {
		return nil, err
	}
	h := &HostBuffer{dev: d, Size: n}
	err := d.Do(func() error {
		return check(fmt.Sprintf("cuMemHostAlloc(%d bytes)", n), d.api.cuMemHostAlloc(&h.p, uint64(n), 0))
	})
	if err != nil {
		return nil, err
	}
	addRegion(h)
	return h, nil
}

// PinHost page-locks p in place (cuMemHostRegister_v2). readOnly must be
// true for memory mapped without write access (an mmap'd checkpoint);
// drivers that cannot register read-only memory fail, and the caller
// should fall back to a Stager. p must stay mapped until Free.
func (d *Device) PinHost(p []byte, readOnly bool) (*HostBuffer, error) {
	if len(p) == 0 {
		return nil, errors.New("cuda: PinHost of an empty slice")
	}
	if err := need(d.api, "cuMemHostRegister_v2", "cuMemHostUnregister"); err != nil {
		return nil, err
	}
	flags := uint32(0)
	if readOnly {
		flags = hostRegisterReadOnly
	}
	h := &HostBuffer{dev: d, p: unsafe.Pointer(&p[0]), Size: len(p), registered: true, keep: p}
	err := d.Do(func() error {
		return check(fmt.Sprintf("cuMemHostRegister(%d bytes, read-only %v)", len(p), readOnly), d.api.cuMemHostRegister(h.p, uint64(len(p)), flags))
	})
	if err != nil {
		return nil, err
	}
	addRegion(h)
	return h, nil
}

// Bytes returns the pinned memory as a byte slice (valid until Free).
func (h *HostBuffer) Bytes() []byte {
	if h == nil || h.p == nil {
		return nil
	}
	return unsafe.Slice((*byte)(h.p), h.Size)
}

// check validates the byte range [off, off+n) of h.
func (h *HostBuffer) check(off, n int) error {
	if h == nil || h.p == nil {
		return errors.New("freed or nil host buffer")
	}
	if off < 0 || n < 0 || off+n > h.Size {
		return fmt.Errorf("range [%d, %d) out of a %d-byte host buffer", off, off+n, h.Size)
	}
	return nil
}

// Free waits for the device's stream (queued copies may still read or
// write h) and then frees or unregisters h. Freeing twice is a no-op.
func (h *HostBuffer) Free() error {
	if h == nil || h.p == nil {
		return nil
	}
	d := h.dev
	if err := d.notCapturing("HostBuffer.Free"); err != nil {
		return err
	}
	removeRegion(h)
	p, registered := h.p, h.registered
	h.p, h.keep = nil, nil
	return d.Do(func() error {
		err := check("cuStreamSynchronize", d.api.cuStreamSynchronize(d.stream))
		if registered {
			return errors.Join(err, check("cuMemHostUnregister", d.api.cuMemHostUnregister(p)))
		}
		return errors.Join(err, check("cuMemFreeHost", d.api.cuMemFreeHost(p)))
	})
}

// Stager uploads host data of any size through a small ring of pinned
// chunks. Its methods may be called from one goroutine at a time.
type Stager struct {
	dev   *Device
	chunk int
	slots []stageSlot
	next  int
}

type stageSlot struct {
	host *HostBuffer
	done *Event // recorded after the slot's last copy
	used bool
}

// Stager defaults: 3 slots of 4 MiB (12 MiB pinned).
const (
	defaultStageChunk = 4 << 20
	defaultStageSlots = 3
)

// NewStager makes a ring of slots pinned chunks of chunk bytes each (0
// picks 4 MiB and 3 slots).
func (d *Device) NewStager(chunk, slots int) (*Stager, error) {
	if chunk <= 0 {
		chunk = defaultStageChunk
	}
	if slots <= 0 {
		slots = defaultStageSlots
	}
	if err := need(d.api, "cuMemcpyHtoDAsync_v2"); err != nil {
		return nil, err
	}
	s := &Stager{dev: d, chunk: chunk}
	for range slots {
		h, err := d.AllocHost(chunk)
		if err != nil {
			return nil, errors.Join(err, s.Close())
		}
		ev, err := d.NewEvent(false)
		if err != nil {
			return nil, errors.Join(err, h.Free(), s.Close())
		}
		s.slots = append(s.slots, stageSlot{host: h, done: ev})
	}
	return s, nil
}

// Upload queues a copy of src to dst at byte offset off. It returns once
// every chunk is queued; src may be reused at once (it was copied into
// pinned slots), except a src inside a PinHost/AllocHost region, which is
// copied directly and must stay unchanged until the stream passes the copy.
func (s *Stager) Upload(dst *Buffer, off int, src []byte) error {
	if off < 0 || off+len(src) > dst.Size {
		return fmt.Errorf("cuda: staged upload of %d bytes at offset %d into a %d-byte buffer", len(src), off, dst.Size)
	}
	if len(src) == 0 {
		return nil
	}
	d := s.dev
	if dst.dev != d {
		return errors.New("cuda: staged upload into a buffer of another device")
	}
	if err := d.notCapturing("Stager.Upload"); err != nil {
		return err
	}
	if pinnedAt(d, unsafe.Pointer(&src[0]), len(src)) != nil {
		p := unsafe.Pointer(&src[0])
		return d.Do(func() error {
			return check("cuMemcpyHtoDAsync", d.api.cuMemcpyHtoDAsync(dst.Ptr+uint64(off), p, uint64(len(src)), d.stream))
		})
	}
	for pos := 0; pos < len(src); pos += s.chunk {
		n := min(s.chunk, len(src)-pos)
		slot := &s.slots[s.next]
		s.next = (s.next + 1) % len(s.slots)
		if slot.used {
			if err := slot.done.Synchronize(); err != nil {
				return err
			}
		}
		copy(slot.host.Bytes()[:n], src[pos:pos+n])
		to := dst.Ptr + uint64(off+pos)
		err := d.Do(func() error {
			if err := check("cuMemcpyHtoDAsync", d.api.cuMemcpyHtoDAsync(to, slot.host.p, uint64(n), d.stream)); err != nil {
				return err
			}
			return check("cuEventRecord", d.api.cuEventRecord(slot.done.h, d.stream))
		})
		if err != nil {
			return fmt.Errorf("cuda: staged upload, chunk at byte %d: %w", pos, err)
		}
		slot.used = true
	}
	return nil
}

// UploadUint16 queues a copy of src (e.g. fp16 bits) to dst at byte
// offset off.
func (s *Stager) UploadUint16(dst *Buffer, off int, src []uint16) error {
	if len(src) == 0 {
		return nil
	}
	return s.Upload(dst, off, unsafe.Slice((*byte)(unsafe.Pointer(&src[0])), 2*len(src)))
}

// UploadFloat32 queues a copy of src to dst at byte offset off.
func (s *Stager) UploadFloat32(dst *Buffer, off int, src []float32) error {
	if len(src) == 0 {
		return nil
	}
	return s.Upload(dst, off, unsafe.Slice((*byte)(unsafe.Pointer(&src[0])), 4*len(src)))
}

// Wait blocks until the GPU has taken every chunk queued so far (the
// copies are complete; later stream work may still be running).
func (s *Stager) Wait() error {
	for i := range s.slots {
		if sl := &s.slots[i]; sl.used {
			if err := sl.done.Synchronize(); err != nil {
				return err
			}
			sl.used = false
		}
	}
	return nil
}

// Close waits for queued chunks and frees the ring.
func (s *Stager) Close() error {
	errs := []error{s.Wait()}
	for _, sl := range s.slots {
		errs = append(errs, sl.done.Close(), sl.host.Free())
	}
	s.slots = nil
	return errors.Join(errs...)
}
