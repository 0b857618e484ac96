// ipcexport.go: sharing a piece of a device allocation with another
// process. A legacy IPC handle names a whole cuMemAlloc allocation, so a
// piece (an arena tensor, a Slice) travels as the handle of its
// allocation, the allocation's size and the piece's offset and size
// (IPCExport). Buffer.ExportIPC finds the allocation of any pointer inside
// it with cuMemGetAddressRange_v2; Arena.Export knows its blocks and also
// checks that the piece lies in a live arena allocation. Either way views
// (Slices, such as one projection's rows of a fused weight) export as
// well as whole allocations. The importer
// opens the allocation once (Device.OpenIPCExport) and takes views. It
// does not reference-count imports or synchronise the two processes
// (finish the producing work before sending the export, platform.md 3.4).
package cuda

import "fmt"

// IPCExport locates Size bytes at Offset inside another process's device
// allocation of AllocSize bytes, named by Handle.
type IPCExport struct {
	Handle    IPCHandle
	AllocSize int
	Offset    int
	Size      int
}

// ExportIPC returns the export of b, which may be a view anywhere inside
// a live cuMemAlloc allocation (the driver's cuMemGetAddressRange_v2 gives
// the allocation's base and size, so b's offset in it).
func (b *Buffer) ExportIPC() (IPCExport, error) {
	if b == nil || b.Size <= 0 {
		return IPCExport{}, fmt.Errorf("cuda: ExportIPC of an empty buffer")
	}
	d := b.dev
	if err := need(d.api, "cuMemGetAddressRange_v2", "cuIpcGetMemHandle"); err != nil {
		return IPCExport{}, err
	}
	var base, size uint64
	err := d.Do(func() error {
		return check("cuMemGetAddressRange", d.api.cuMemGetAddressRange(&base, &size, b.Ptr))
	})
	if err != nil {
		return IPCExport{}, fmt.Errorf("cuda: ExportIPC of [%#x, +%d): no live allocation holds it: %w", b.Ptr, b.Size, err)
	}
	if b.Ptr < base || b.Ptr+uint64(b.Size) > base+size {
		return IPCExport{}, fmt.Errorf("cuda: ExportIPC: buffer [%#x, +%d) is not inside its allocation [%#x, +%d)", b.Ptr, b.Size, base, size)
	}
	whole := &Buffer{dev: d, Ptr: base, Size: int(size)}
	h, err := whole.IPCHandle()
	if err != nil {
		return IPCExport{}, fmt.Errorf("cuda: ExportIPC of [%#x, +%d): %w", b.Ptr, b.Size, err)
	}
	return IPCExport{Handle: h, AllocSize: int(size), Offset: int(b.Ptr - base), Size: b.Size}, nil
}

// OpenIPCExport maps the allocation of x (exported by another process) and
// returns it with a view of x's piece. Close the IPCBuffer when done (the
// view dies with it); an allocation shared by several exports should be
// opened once per process and sliced (Buffer.Slice) instead.
func (d *Device) OpenIPCExport(x IPCExport) (*IPCBuffer, *Buffer, error) {
	if x.Offset < 0 || x.Size <= 0 || x.Offset+x.Size > x.AllocSize {
		return nil, nil, fmt.Errorf("cuda: OpenIPCExport: piece [%d, +%d) outside an allocation of %d bytes", x.Offset, x.Size, x.AllocSize)
	}
	m, err := d.OpenIPC(x.Handle, x.AllocSize)
	if err != nil {
		return nil, nil, err
	}
	v, err := m.Slice(x.Offset, x.Size)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (%v)", err, m.Close())
	}
	return m, v, nil
}
