// arena.go: a device memory pool. An Arena takes memory from the driver in
// a few large cuMemAlloc blocks and hands out 256-byte aligned pieces of
// them (the algorithm is in arenapool.go): no driver call per tensor, no
// implicit synchronisation of cuMemFree, and Reset drops a whole step's
// scratch at once. Pieces are Buffer views (Buffer.Free on them is a
// no-op; give them back with Arena.Free or Reset).
//
// All work runs on the device's one stream, so memory freed to the arena
// can be handed out again at once: later kernels are queued after the ones
// that used it. Reading a piece back on the host still goes through the
// usual (synchronising) downloads. When the driver has no room for a new
// block, the arena returns its empty blocks and tries a block of just the
// size needed before giving up with the driver's *OutOfMemoryError.
// During graph capture the arena hands
// out pieces of blocks it already holds but cannot grow (Reserve first).
// Export gives the IPC handle of the block holding a piece, or a view
// inside a piece, plus its offset (plugins map device tensors that way). It does not use VMM
// (cuMemCreate/cuMemMap) or stream-ordered allocation (cuMemAllocAsync),
// and it does not defragment live allocations.
package cuda

import (
	"errors"
	"fmt"
	"sync"
)

// ArenaOptions configures an Arena.
type ArenaOptions struct {
	// Name appears in errors ("unet scratch").
	Name string
	// BlockSize is the size of each cuMemAlloc block (0: 256 MiB); a
	// larger request gets a block of its own size (rounded to 2 MiB).
	BlockSize int64
	// Limit caps the bytes held from the driver (0: no cap). BlockSize ==
	// Limit gives an arena of exactly one block, i.e. one IPC handle.
	Limit int64
}

// Arena is a device memory pool; its methods may be called from any
// goroutine.
type Arena struct {
	dev  *Device
	name string

	mu     sync.Mutex
	p      *pool
	blocks map[uint64]*Buffer   // block base -> its cuMemAlloc buffer
	asked  map[uint64]int       // live piece -> requested bytes
	ipc    map[uint64]IPCHandle // block base -> exported handle
	closed bool
}

// NewArena makes an empty arena on d; memory is taken on first use (or
// Reserve).
func (d *Device) NewArena(opt ArenaOptions) *Arena {
	a := &Arena{dev: d, name: opt.Name, blocks: map[uint64]*Buffer{}, asked: map[uint64]int{}, ipc: map[uint64]IPCHandle{}}
	if a.name == "" {
		a.name = "arena"
	}
	a.p = newPool(opt.BlockSize, opt.Limit, a.grow, a.release)
	return a
}

// grow takes a new block from the driver (a.mu held).
func (a *Arena) grow(n int64) (uint64, error) {
	if err := a.dev.notCapturing(fmt.Sprintf("%s must grow by %d bytes", a.name, n)); err != nil {
		return 0, err
	}
	b, err := a.dev.Alloc(int(n))
	if err != nil {
		return 0, fmt.Errorf("cuda: %s: new block of %d bytes: %w", a.name, n, err)
	}
	a.blocks[b.Ptr] = b
	return b.Ptr, nil
}

// release gives a block back to the driver (a.mu held).
func (a *Arena) release(base uint64) error {
	b := a.blocks[base]
	if err := b.Free(); err != nil {
		return fmt.Errorf("cuda: %s: free block: %w", a.name, err)
	}
	delete(a.blocks, base)
	delete(a.ipc, base)
	return nil
}

// Alloc returns n bytes of device memory (contents undefined), aligned to
// ArenaAlign.
func (a *Arena) Alloc(n int) (*Buffer, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, fmt.Errorf("cuda: %s is closed", a.name)
	}
	var p uint64
	err := a.tight(func() (err error) { p, err = a.p.alloc(int64(n)); return err })
	if err != nil {
		return nil, fmt.Errorf("cuda: %s: alloc %d bytes: %w", a.name, n, err)
	}
	a.asked[p] = n
	return &Buffer{dev: a.dev, Ptr: p, Size: n, view: true}, nil
}

// tight runs take (an alloc or reserve of the pool, a.mu held) and, when
// the driver is out of memory for a new block, tries again after giving
// the empty blocks back, then with a block of only the size needed
// (rounded to ArenaAlign) instead of BlockSize: a card with little free memory
// still fits what it can hold. The error of the last try is returned (an
// *OutOfMemoryError when the memory is really not there).
func (a *Arena) tight(take func() error) error {
	err := take()
	var oom *OutOfMemoryError
	if !errors.As(err, &oom) {
		return err
	}
	if released, terr := a.p.trim(); terr == nil && released > 0 {
		if err = take(); !errors.As(err, &oom) {
			return err
		}
	}
	a.p.exact = true
	defer func() { a.p.exact = false }()
	return take()
}

// Free gives b (returned by Alloc, not a Slice of it) back to the arena.
// Work already queued on the stream may still use it; later work reusing
// the memory is queued after it.
func (a *Arena) Free(b *Buffer) error {
	if b == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return fmt.Errorf("cuda: %s is closed", a.name)
	}
	n, ok := a.asked[b.Ptr]
	if !ok || n != b.Size {
		return fmt.Errorf("cuda: %s: free of %d bytes at %#x: not an allocation of this arena (double free, Reset, or a Slice)", a.name, b.Size, b.Ptr)
	}
	if err := a.p.free(b.Ptr, int64(n)); err != nil {
		return err
	}
	delete(a.asked, b.Ptr)
	return nil
}

// Reset frees every allocation at once; Buffers handed out before must
// not be used afterwards. The blocks stay (use Trim to return them). The
// same sequence of Allocs after each Reset yields the same addresses.
func (a *Arena) Reset() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.p.reset()
	clear(a.asked)
}

// Reserve makes sure n bytes can be allocated in one piece without taking
// memory from the driver (e.g. before a graph capture).
func (a *Arena) Reserve(n int) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return fmt.Errorf("cuda: %s is closed", a.name)
	}
	if err := a.tight(func() error { return a.p.reserve(int64(n)) }); err != nil {
		return fmt.Errorf("cuda: %s: reserve %d bytes: %w", a.name, n, err)
	}
	return nil
}

// Trim returns the blocks with nothing allocated in them to the driver and
// reports the bytes released.
func (a *Arena) Trim() (int64, error) {
	if err := a.dev.notCapturing("Arena.Trim"); err != nil {
		return 0, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.p.trim()
}

// Stats returns the arena's current figures.
func (a *Arena) Stats() ArenaStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.p.stats()
}

// Close waits for the device's stream and frees every block; all Buffers
// of the arena become invalid. Closing twice is a no-op.
func (a *Arena) Close() error {
	if err := a.dev.notCapturing("Arena.Close"); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	errs := []error{a.dev.Synchronize()}
	for base, b := range a.blocks {
		errs = append(errs, b.Free())
		delete(a.blocks, base)
	}
	clear(a.asked)
	clear(a.ipc)
	a.p = newPool(a.p.blockSize, a.p.limit, a.grow, a.release) // empty: Stats reads zero
	return errors.Join(errs...)
}

// Export returns what another process needs to map b: a live allocation
// of this arena or a view inside one (a Slice, e.g. one weight's rows of
// a fused q/k/v weight), given by the IPC handle of the block holding it,
// the block's size and b's offset in it (see IPCExport; the handle is made
// once per block). A view reaching past its allocation's requested size,
// or into freed memory, is refused.
func (a *Arena) Export(b *Buffer) (IPCExport, error) {
	if b == nil || b.Size <= 0 {
		return IPCExport{}, fmt.Errorf("cuda: %s: export of an empty buffer", a.name)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return IPCExport{}, fmt.Errorf("cuda: %s is closed", a.name)
	}
	if !a.holds(b.Ptr, b.Size) {
		return IPCExport{}, fmt.Errorf("cuda: %s: export of [%#x, +%d): not inside a live allocation of this arena", a.name, b.Ptr, b.Size)
	}
	blk, ok := a.p.blockOf(b.Ptr)
	if !ok {
		return IPCExport{}, fmt.Errorf("cuda: %s: export of %#x: no block holds it", a.name, b.Ptr)
	}
	h, ok := a.ipc[blk.base]
	if !ok {
		var err error
		if h, err = a.blocks[blk.base].IPCHandle(); err != nil {
			return IPCExport{}, fmt.Errorf("cuda: %s: export: %w", a.name, err)
		}
		a.ipc[blk.base] = h
	}
	return IPCExport{Handle: h, AllocSize: int(blk.size), Offset: int(b.Ptr - blk.base), Size: b.Size}, nil
}

// holds reports whether [p, p+n) lies inside one live allocation's
// requested bytes (a.mu held). An allocation's own start is looked up
// directly; an interior view costs one pass over the live allocations.
func (a *Arena) holds(p uint64, n int) bool {
	end := p + uint64(n)
	if m, ok := a.asked[p]; ok {
		return end <= p+uint64(m)
	}
	for q, m := range a.asked {
		if q <= p && end <= q+uint64(m) {
			return true
		}
	}
	return false
}
