// arena.go: host-side shared arenas. An Arena is one sealed memfd the host
// maps read-write; an ArenaPool hands out float32 slices from a chain of
// arenas (the allocator models.Weights.SetAlloc uses), so model weights live
// where plugins can map them. RefOf turns a slice back into a TensorRef.
//
// It does not send arenas to plugins (plugin.go maps them on first use) and
// never frees single tensors: arenas live as long as the model they hold.
package host

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/plugins/sdk/shm"
)

// arenaAlign aligns every tensor in an arena (cache line, and enough for
// any dtype and for SIMD loads).
const arenaAlign = 64

var (
	nextArenaID atomic.Uint32
	arenaMu     sync.RWMutex
	arenaByID   = map[uint32]*Arena{}
)

// Arena is one sealed memfd, mapped read-write by the host.
type Arena struct {
	ID             uint32
	Name           string
	PluginWritable bool // plugins map it read-write (else read-only, kernel-enforced)

	f    *os.File
	mem  []byte
	mu   sync.Mutex
	used int
	// borrowed: mem is someone else's mapping (a file arena over a mapped
	// checkpoint, plugin_originals.go); Close leaves it mapped.
	borrowed bool
	// dev is set for a device arena (arena_device.go): mem and f are nil.
	dev *deviceArena
}

// NewArena creates an arena of size bytes.
func NewArena(name string, size int, pluginWritable bool) (*Arena, error) {
	id := nextArenaID.Add(1)
	f, mem, err := shm.Create(fmt.Sprintf("sdbridge-%s-%d", name, id), size, !pluginWritable)
	if err != nil {
		return nil, fmt.Errorf("arena %q: %w", name, err)
	}
	a := &Arena{ID: id, Name: name, PluginWritable: pluginWritable, f: f, mem: mem}
	arenaMu.Lock()
	arenaByID[id] = a
	arenaMu.Unlock()
	return a, nil
}

// lookupArena finds a live arena by id.
func lookupArena(id uint32) (*Arena, bool) {
	arenaMu.RLock()
	defer arenaMu.RUnlock()
	a, ok := arenaByID[id]
	return a, ok
}

// Size is the arena's size in bytes.
func (a *Arena) Size() int {
	if a.dev != nil {
		return a.dev.size
	}
	return len(a.mem)
}

// Used is the number of bytes handed out.
func (a *Arena) Used() int { a.mu.Lock(); defer a.mu.Unlock(); return a.used }

// Bytes is the host's read-write mapping.
func (a *Arena) Bytes() []byte { return a.mem }

// Fd is the memfd (to send to plugins); -1 for a device arena.
func (a *Arena) Fd() int {
	if a.f == nil {
		return -1
	}
	return int(a.f.Fd())
}

// alloc reserves n bytes aligned to arenaAlign; ok is false when full.
func (a *Arena) alloc(n int) (off int, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	off = (a.used + arenaAlign - 1) &^ (arenaAlign - 1)
	if off+n > len(a.mem) {
		return 0, false
	}
	a.used = off + n
	return off, true
}

// AllocFloat32 returns n zeroed float32s inside the arena, or nil if full.
func (a *Arena) AllocFloat32(n int) []float32 {
	off, ok := a.alloc(4 * n)
	if !ok {
		return nil
	}
	if n == 0 {
		return []float32{}
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&a.mem[off])), n)
}

// contains reports the byte offset of p[0:n] inside the arena.
func (a *Arena) contains(p unsafe.Pointer, n int) (uint64, bool) {
	if len(a.mem) == 0 {
		return 0, false
	}
	base := uintptr(unsafe.Pointer(&a.mem[0]))
	q := uintptr(p)
	if q < base || q+uintptr(n) > base+uintptr(len(a.mem)) {
		return 0, false
	}
	return uint64(q - base), true
}

// Close unmaps and closes the arena; slices from it must no longer be used.
func (a *Arena) Close() error {
	arenaMu.Lock()
	delete(arenaByID, a.ID)
	arenaMu.Unlock()
	if a.dev != nil {
		return nil // the allocation belongs to its owner (a model)
	}
	var err error
	if !a.borrowed {
		err = shm.Unmap(a.mem)
	}
	a.mem = nil
	if cerr := a.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// ArenaPool allocates from a chain of arenas of at least Chunk bytes each.
type ArenaPool struct {
	Name           string
	Chunk          int
	PluginWritable bool

	mu     sync.Mutex
	arenas []*Arena
	err    error
}

// NewArenaPool makes a pool whose arenas are chunk bytes (or larger for a
// single big tensor).
func NewArenaPool(name string, chunk int, pluginWritable bool) *ArenaPool {
	return &ArenaPool{Name: name, Chunk: chunk, PluginWritable: pluginWritable}
}

// AllocFloat32 returns n zeroed float32s in a shared arena. If no arena can
// be created it records the error (Err) and returns ordinary memory, which
// RefOf then refuses with a clear error.
func (p *ArenaPool) AllocFloat32(n int) []float32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.arenas) > 0 {
		if s := p.arenas[len(p.arenas)-1].AllocFloat32(n); s != nil {
			return s
		}
	}
	size := max(p.Chunk, 4*n+arenaAlign)
	a, err := NewArena(p.Name, size, p.PluginWritable)
	if err != nil {
		if p.err == nil {
			p.err = err
		}
		return make([]float32, n)
	}
	p.arenas = append(p.arenas, a)
	return a.AllocFloat32(n)
}

// Err is the first arena creation failure, if any.
func (p *ArenaPool) Err() error { p.mu.Lock(); defer p.mu.Unlock(); return p.err }

// Arenas lists the pool's arenas.
func (p *ArenaPool) Arenas() []*Arena {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*Arena(nil), p.arenas...)
}

// Close closes every arena of the pool.
func (p *ArenaPool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var first error
	for _, a := range p.arenas {
		if err := a.Close(); err != nil && first == nil {
			first = err
		}
	}
	p.arenas = nil
	return first
}

// RefOf describes data (float32, shape) as a TensorRef if it lies in a live
// arena. writable asks for a write grant, possible only in a
// plugin-writable arena.
func RefOf(name string, data []float32, shape []int, writable bool) (sdk.TensorRef, error) {
	if sdk.Numel(shape) != len(data) {
		return sdk.TensorRef{}, fmt.Errorf("tensor %q: %d values for shape %v", name, len(data), shape)
	}
	if len(data) == 0 {
		return sdk.TensorRef{}, fmt.Errorf("tensor %q: empty tensors cannot be shared", name)
	}
	p := unsafe.Pointer(&data[0])
	arenaMu.RLock()
	defer arenaMu.RUnlock()
	for _, a := range arenaByID {
		if off, ok := a.contains(p, 4*len(data)); ok {
			if writable && !a.PluginWritable {
				return sdk.TensorRef{}, fmt.Errorf("tensor %q: arena %d (%s) is read-only for plugins", name, a.ID, a.Name)
			}
			return sdk.TensorRef{Name: name, Arena: a.ID, Offset: off, DType: sdk.F32, Shape: append([]int(nil), shape...), Writable: writable}, nil
		}
	}
	return sdk.TensorRef{}, fmt.Errorf("tensor %q is not in a shared arena (allocate it from an ArenaPool)", name)
}
