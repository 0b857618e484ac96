// ipc.go: legacy CUDA IPC handles, so another process (a plugin) can map a
// buffer the host allocated. The 64-byte handle travels in a gRPC message;
// the importer opens it in its own context. It does not implement VMM
// POSIX-fd sharing (the preferred path for arenas, platform.md 3.3) or IPC
// events yet.
package cuda

import "fmt"

// IPCHandle is a CUipcMemHandle: 64 opaque bytes.
type IPCHandle struct {
	Reserved [64]byte
}

// ipcLazyEnablePeerAccess is CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS.
const ipcLazyEnablePeerAccess = 1

// IPCHandle exports b (which must be a whole cuMemAlloc allocation, not a
// view) for other processes.
func (b *Buffer) IPCHandle() (IPCHandle, error) {
	var h IPCHandle
	d := b.dev
	if d.api.cuIpcGetMemHandle == nil {
		return h, fmt.Errorf("cuda: this driver has no cuIpcGetMemHandle")
	}
	if b.view {
		return h, fmt.Errorf("cuda: IPCHandle of a buffer view; export the whole allocation and send the offset")
	}
	err := d.Do(func() error { return check("cuIpcGetMemHandle", d.api.cuIpcGetMemHandle(&h, b.Ptr)) })
	return h, err
}

// OpenIPC maps a buffer of size bytes exported by another process. Free
// on the result closes the mapping (it does not free the exporter's memory).
func (d *Device) OpenIPC(h IPCHandle, size int) (*IPCBuffer, error) {
	if d.api.cuIpcOpenMemHandle == nil {
		return nil, fmt.Errorf("cuda: this driver has no cuIpcOpenMemHandle_v2")
	}
	var p uint64
	err := d.Do(func() error {
		return check("cuIpcOpenMemHandle", d.api.cuIpcOpenMemHandle(&p, h, ipcLazyEnablePeerAccess))
	})
	if err != nil {
		return nil, err
	}
	return &IPCBuffer{Buffer: Buffer{dev: d, Ptr: p, Size: size, view: true}}, nil
}

// IPCBuffer is another process's buffer mapped into this one.
type IPCBuffer struct {
	Buffer
}

// Close unmaps the imported buffer.
func (b *IPCBuffer) Close() error {
	if b.Ptr == 0 {
		return nil
	}
	p := b.Ptr
	b.Ptr = 0
	return b.dev.Do(func() error { return check("cuIpcCloseMemHandle", b.dev.api.cuIpcCloseMemHandle(p)) })
}
