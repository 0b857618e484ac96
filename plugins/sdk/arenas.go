// arenas.go: the plugin side of shared arenas. The host sends each arena's
// memfd on the side socket and then calls MapArena; the plugin maps it once
// (read-only unless the host marked it writable) and binds every TensorRef
// of later requests to that mapping, checking bounds and write grants. A
// device arena (minor 2) comes as a CUDA IPC handle instead of an fd and is
// opened once on the process's device (device.go); refs into it bind to
// device buffer views.
//
// It does not create arenas (host/arena.go, sdktest) and cannot stop a
// plugin from writing a writable arena outside its grants; the host checks
// what the plugin reports and the kernel enforces read-only arenas.
package sdk

import (
	"fmt"
	"sync"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/plugins/sdk/shm"
	"golang.org/x/sys/unix"
)

type mappedArena struct {
	mem      []byte
	dev      *openIPC // device arena: the opened IPC mapping (mem is nil)
	writable bool
}

// openIPC is one opened CUDA IPC handle, shared by every arena naming the
// same allocation (a process opens a handle once; the host may register
// one allocation under several arena ids).
type openIPC struct {
	buf    *cuda.IPCBuffer
	handle cuda.IPCHandle
	refs   int
}

// release drops the mapping (t: the table, for shared IPC mappings).
func (m *mappedArena) release(t *arenaTable) error {
	if m.dev != nil {
		m.dev.refs--
		if m.dev.refs > 0 {
			return nil
		}
		delete(t.ipc, m.dev.handle)
		return m.dev.buf.Close()
	}
	return shm.Unmap(m.mem)
}

// arenaTable holds the plugin's mappings, by arena id.
type arenaTable struct {
	mu     sync.RWMutex
	side   int // side socket fd, -1 if none
	arenas map[uint32]*mappedArena
	ipc    map[cuda.IPCHandle]*openIPC // opened device allocations
}

func newArenaTable(side int) *arenaTable {
	return &arenaTable{side: side, arenas: map[uint32]*mappedArena{}, ipc: map[cuda.IPCHandle]*openIPC{}}
}

// receive takes the next fd from the side socket, which must be arena id.
func (a *arenaTable) receive(id uint32, size uint64, writable bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.side < 0 {
		return fmt.Errorf("arena %d: plugin has no side socket (not started by the sdbridge host?)", id)
	}
	if _, ok := a.arenas[id]; ok {
		return fmt.Errorf("arena %d is already mapped", id)
	}
	h, fd, err := shm.Recv(a.side)
	if err != nil {
		return fmt.Errorf("arena %d: %w", id, err)
	}
	defer unix.Close(fd) // the mapping keeps the memory alive
	if h.ID != id || h.Size != size || h.Writable != writable {
		return fmt.Errorf("arena %d: side socket delivered arena %d (size %d, writable %v), want size %d writable %v", id, h.ID, h.Size, h.Writable, size, writable)
	}
	mem, err := shm.Map(fd, int(size), writable)
	if err != nil {
		return fmt.Errorf("arena %d: %w", id, err)
	}
	a.arenas[id] = &mappedArena{mem: mem, writable: writable}
	return nil
}

// receiveDevice opens the CUDA IPC handle of device arena id on the
// process's device ordinal.
func (a *arenaTable) receiveDevice(id uint32, size uint64, writable bool, handle []byte, ordinal int) error {
	var h cuda.IPCHandle
	if len(handle) != len(h.Reserved) {
		return fmt.Errorf("arena %d: CUDA IPC handle of %d bytes, want %d", id, len(handle), len(h.Reserved))
	}
	copy(h.Reserved[:], handle)
	if size == 0 || size > 1<<50 {
		return fmt.Errorf("arena %d: device arena of %d bytes", id, size)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.arenas[id]; ok {
		return fmt.Errorf("arena %d is already mapped", id)
	}
	if o, ok := a.ipc[h]; ok {
		if o.buf.Size != int(size) {
			return fmt.Errorf("arena %d: allocation already open with %d bytes, announced %d", id, o.buf.Size, size)
		}
		o.refs++
		a.arenas[id] = &mappedArena{dev: o, writable: writable}
		return nil
	}
	d, err := CUDADevice(ordinal)
	if err != nil {
		return fmt.Errorf("arena %d: %w", id, err)
	}
	b, err := d.OpenIPC(h, int(size))
	if err != nil {
		return fmt.Errorf("arena %d: opening the CUDA IPC handle on device %d: %w", id, ordinal, err)
	}
	o := &openIPC{buf: b, handle: h, refs: 1}
	a.ipc[h] = o
	a.arenas[id] = &mappedArena{dev: o, writable: writable}
	return nil
}

func (a *arenaTable) unmap(id uint32) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	m, ok := a.arenas[id]
	if !ok {
		return fmt.Errorf("arena %d is not mapped", id)
	}
	delete(a.arenas, id)
	return m.release(a)
}

func (a *arenaTable) closeAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, m := range a.arenas {
		m.release(a)
		delete(a.arenas, id)
	}
}

// bind resolves a ref to a view. A writable ref must lie in a writable
// arena; mustWrite demands a writable grant (outputs).
func (a *arenaTable) bind(ref TensorRef, mustWrite bool) (*Tensor, error) {
	if mustWrite && !ref.Writable {
		return nil, fmt.Errorf("tensor %q: output not granted writable", ref.Name)
	}
	a.mu.RLock()
	m, ok := a.arenas[ref.Arena]
	a.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("tensor %q: arena %d is not mapped", ref.Name, ref.Arena)
	}
	if ref.Writable && !m.writable {
		return nil, fmt.Errorf("tensor %q: writable grant in read-only arena %d", ref.Name, ref.Arena)
	}
	if m.dev != nil {
		return BindDeviceTensor(ref, &m.dev.buf.Buffer)
	}
	return BindTensor(ref, m.mem)
}

func (a *arenaTable) bindAll(refs []TensorRef, mustWrite bool) ([]*Tensor, error) {
	out := make([]*Tensor, len(refs))
	seen := make(map[string]bool, len(refs))
	for i, r := range refs {
		if seen[r.Name] {
			return nil, fmt.Errorf("tensor %q given twice", r.Name)
		}
		seen[r.Name] = true
		t, err := a.bind(r, mustWrite)
		if err != nil {
			return nil, err
		}
		out[i] = t
	}
	return out, nil
}
