// arenapool.go: the allocation algorithm behind Arena, in pure Go (no
// driver; tested on its own). Memory comes in large blocks from a grow
// callback; each block is a chain of spans in address order, free or in
// use. Free spans sit in size-class bins (four classes per power of two,
// in 256-byte units), so a request looks at its own class for the best fit
// and then takes the smallest span of the next non-empty class; the span
// is split and the rest goes back to a bin. Freeing merges a span with
// free neighbours, which keeps fragmentation down when tensors of mixed
// sizes come and go. Reset frees everything at once (per-step scratch).
// The same sequence of calls gives the same addresses (what graph replay
// needs). It does not return memory to the driver by itself (Trim does),
// and it is not safe for concurrent use (Arena locks).
package cuda

import (
	"errors"
	"fmt"
	"math/bits"
)

// ArenaAlign is the alignment of every arena allocation (and the
// granularity of sizes): 256 bytes, as cudaMalloc guarantees.
const ArenaAlign = 256

// growAlign rounds the size of a new block (2 MiB: the GPU page size).
const growAlign = 2 << 20

// nClasses covers spans up to maxSpan bytes.
const (
	maxSpan  = 1<<46 - 1
	nClasses = 7 + 4*(46-8-3) // classOf(maxSpan/ArenaAlign) + 1
)

// classOf returns the size class of a span of u 256-byte units (u >= 1):
// u itself below 8, then four classes per power of two.
func classOf(u int64) int {
	if u < 8 {
		return int(u) - 1
	}
	e := bits.Len64(uint64(u)) - 1 // 2^e <= u < 2^(e+1), e >= 3
	m := int(u>>(e-2)) & 3
	return 7 + (e-3)*4 + m
}

// classMin returns the smallest unit count of class c.
func classMin(c int) int64 {
	if c < 7 {
		return int64(c) + 1
	}
	e := 3 + (c-7)/4
	m := int64((c - 7) % 4)
	return (4 + m) << (e - 2)
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

// span is a run of a block's bytes.
type span struct {
	blk        *poolBlock
	off, size  int64
	free       bool
	prev, next *span // address order within blk
	class, pos int   // bin and index in it while free
}

type poolBlock struct {
	base  uint64
	size  int64
	first *span
}

// pool is a best-fit, size-class binned allocator over grown blocks.
type pool struct {
	blockSize int64                                  // minimum size of a new block
	exact     bool                                   // round a new block to ArenaAlign only (a last try when memory is short)
	limit     int64                                  // cap on reserved bytes (0: none)
	grow      func(n int64) (base uint64, err error) // gets a new block
	release   func(base uint64) error                // returns a block (Trim)

	blocks []*poolBlock
	bins   [nClasses][]*span
	live   map[uint64]*span

	st ArenaStats
}

func newPool(blockSize, limit int64, grow func(int64) (uint64, error), release func(uint64) error) *pool {
	if blockSize <= 0 {
		blockSize = 256 << 20
	}
	return &pool{blockSize: alignUp(blockSize, ArenaAlign), limit: limit / ArenaAlign * ArenaAlign, grow: grow, release: release, live: map[uint64]*span{}}
}

func (p *pool) binAdd(s *span) {
	s.free = true
	s.class = classOf(s.size / ArenaAlign)
	s.pos = len(p.bins[s.class])
	p.bins[s.class] = append(p.bins[s.class], s)
}

func (p *pool) binRemove(s *span) {
	b := p.bins[s.class]
	last := b[len(b)-1]
	b[s.pos] = last
	last.pos = s.pos
	p.bins[s.class] = b[:len(b)-1]
	s.free = false
}

// better reports whether span a fits a request more tightly than b
// (smaller, then lower block, then lower offset: deterministic).
func (p *pool) better(a, b *span) bool {
	if b == nil || a.size != b.size {
		return b == nil || a.size < b.size
	}
	if a.blk != b.blk {
		return p.blockIndex(a.blk) < p.blockIndex(b.blk)
	}
	return a.off < b.off
}

func (p *pool) blockIndex(b *poolBlock) int {
	for i, x := range p.blocks {
		if x == b {
			return i
		}
	}
	return -1
}

// find returns the best free span of at least size bytes, or nil.
func (p *pool) find(size int64) *span {
	c := classOf(size / ArenaAlign)
	var best *span
	for _, s := range p.bins[c] {
		if s.size >= size && p.better(s, best) {
			best = s
		}
	}
	if best != nil {
		return best
	}
	for c++; c < nClasses; c++ {
		for _, s := range p.bins[c] {
			if p.better(s, best) {
				best = s
			}
		}
		if best != nil {
			return best
		}
	}
	return nil
}

// addBlock grows the pool by a block of at least size bytes.
func (p *pool) addBlock(size int64) (*span, error) {
	n := max(p.blockSize, alignUp(size, growAlign))
	if p.exact {
		n = alignUp(size, ArenaAlign)
	}
	if p.limit > 0 && p.st.Reserved+n > p.limit {
		n = p.limit - p.st.Reserved
		if n < size {
			return nil, fmt.Errorf("cuda: arena limit of %d bytes reached (%d reserved, %d in use, largest free span %d): cannot place %d bytes",
				p.limit, p.st.Reserved, p.st.InUse, p.largestFree(), size)
		}
	}
	base, err := p.grow(n)
	if err != nil {
		return nil, err
	}
	if base%ArenaAlign != 0 {
		return nil, fmt.Errorf("cuda: arena block at %#x is not %d-byte aligned", base, ArenaAlign)
	}
	b := &poolBlock{base: base, size: n}
	s := &span{blk: b, size: n}
	b.first = s
	p.blocks = append(p.blocks, b)
	p.binAdd(s)
	p.st.Blocks++
	p.st.Reserved += n
	p.st.Grows++
	return s, nil
}

// alloc returns the address of n fresh bytes (n > 0).
func (p *pool) alloc(n int64) (uint64, error) {
	if n <= 0 || n > maxSpan {
		return 0, fmt.Errorf("cuda: arena allocation of %d bytes", n)
	}
	size := alignUp(n, ArenaAlign)
	s := p.find(size)
	if s == nil {
		var err error
		if s, err = p.addBlock(size); err != nil {
			return 0, err
		}
	}
	p.binRemove(s)
	if rest := s.size - size; rest >= ArenaAlign {
		r := &span{blk: s.blk, off: s.off + size, size: rest, prev: s, next: s.next}
		if s.next != nil {
			s.next.prev = r
		}
		s.next = r
		s.size = size
		p.binAdd(r)
	}
	addr := s.blk.base + uint64(s.off)
	p.live[addr] = s
	p.st.Live++
	p.st.InUse += s.size
	p.st.Requested += n
	p.st.Peak = max(p.st.Peak, p.st.InUse)
	p.st.Allocs++
	return addr, nil
}

// free returns the allocation at addr; requested is what alloc was asked
// for (for the Requested statistic).
func (p *pool) free(addr uint64, requested int64) error {
	s, ok := p.live[addr]
	if !ok {
		return fmt.Errorf("cuda: arena free of %#x: not a live allocation of this arena (double free, a view, or another allocator's memory)", addr)
	}
	delete(p.live, addr)
	p.st.Live--
	p.st.InUse -= s.size
	p.st.Requested -= requested
	p.st.Frees++
	if nx := s.next; nx != nil && nx.free {
		p.binRemove(nx)
		s.size += nx.size
		s.next = nx.next
		if nx.next != nil {
			nx.next.prev = s
		}
	}
	if pv := s.prev; pv != nil && pv.free {
		p.binRemove(pv)
		pv.size += s.size
		pv.next = s.next
		if s.next != nil {
			s.next.prev = pv
		}
		s = pv
	}
	p.binAdd(s)
	return nil
}

// reset frees every allocation: each block becomes one free span.
func (p *pool) reset() {
	for i := range p.bins {
		p.bins[i] = p.bins[i][:0]
	}
	clear(p.live)
	for _, b := range p.blocks {
		s := &span{blk: b, size: b.size}
		b.first = s
		p.binAdd(s)
	}
	p.st.Live, p.st.InUse, p.st.Requested = 0, 0, 0
	p.st.Resets++
}

// reserve makes sure one free span of at least n bytes exists.
func (p *pool) reserve(n int64) error {
	if n > maxSpan {
		return fmt.Errorf("cuda: arena reserve of %d bytes", n)
	}
	size := alignUp(max(n, 1), ArenaAlign)
	if p.find(size) != nil {
		return nil
	}
	_, err := p.addBlock(size)
	return err
}

// trim releases every block with nothing allocated in it and returns the
// bytes released.
func (p *pool) trim() (int64, error) {
	var freed int64
	var errs []error
	kept := p.blocks[:0]
	for _, b := range p.blocks {
		if s := b.first; s.free && s.size == b.size {
			if err := p.release(b.base); err != nil {
				errs = append(errs, err)
				kept = append(kept, b)
				continue
			}
			p.binRemove(s)
			freed += b.size
			p.st.Blocks--
			p.st.Reserved -= b.size
			continue
		}
		kept = append(kept, b)
	}
	clear(p.blocks[len(kept):])
	p.blocks = kept
	return freed, errors.Join(errs...)
}

// largestFree returns the size of the largest free span.
func (p *pool) largestFree() int64 {
	for c := nClasses - 1; c >= 0; c-- {
		var m int64
		for _, s := range p.bins[c] {
			m = max(m, s.size)
		}
		if m > 0 {
			return m
		}
	}
	return 0
}

// stats returns the counters plus the free-space figures.
func (p *pool) stats() ArenaStats {
	st := p.st
	st.Free = st.Reserved - st.InUse
	st.LargestFree = p.largestFree()
	for _, b := range p.bins {
		st.FreeSpans += len(b)
	}
	return st
}

// blockOf returns the block holding addr.
func (p *pool) blockOf(addr uint64) (*poolBlock, bool) {
	for _, b := range p.blocks {
		if addr >= b.base && addr < b.base+uint64(b.size) {
			return b, true
		}
	}
	return nil, false
}

// ArenaStats describes an arena's memory.
type ArenaStats struct {
	Blocks      int   // blocks held from the driver
	Reserved    int64 // bytes held from the driver
	InUse       int64 // bytes of live allocations (rounded up to ArenaAlign)
	Requested   int64 // bytes asked for by live allocations
	Peak        int64 // highest InUse so far
	Live        int   // live allocations
	Free        int64 // Reserved - InUse
	LargestFree int64 // largest single free span
	FreeSpans   int
	Allocs      int64 // counters since creation
	Frees       int64
	Grows       int64
	Resets      int64
}

// Fragmentation is 1 - LargestFree/Free: 0 when all free memory is one
// span, near 1 when it is scattered in small pieces.
func (s ArenaStats) Fragmentation() float64 {
	if s.Free == 0 {
		return 0
	}
	return 1 - float64(s.LargestFree)/float64(s.Free)
}

func (s ArenaStats) String() string {
	return fmt.Sprintf("%d blocks, %.1f MiB reserved, %.1f MiB in use (%d live, peak %.1f MiB), largest free %.1f MiB, fragmentation %.2f",
		s.Blocks, mib(s.Reserved), mib(s.InUse), s.Live, mib(s.Peak), mib(s.LargestFree), s.Fragmentation())
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
