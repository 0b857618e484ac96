// arenapool_test.go: the arena's allocation algorithm without a driver:
// size classes, alignment, reuse, splitting and merging, best fit, growth,
// the limit, Reset determinism, Trim, statistics and a randomised run
// checked against the pool's invariants after every step.
package cuda

import (
	"errors"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// fakeBlocks hands out block addresses 1 TiB apart, as a driver would.
type fakeBlocks struct {
	grown    []int64
	released []uint64
	next     uint64
	fail     error
}

func (f *fakeBlocks) grow(n int64) (uint64, error) {
	if f.fail != nil {
		return 0, f.fail
	}
	f.next += 1 << 40
	f.grown = append(f.grown, n)
	return f.next, nil
}

func (f *fakeBlocks) release(base uint64) error {
	f.released = append(f.released, base)
	return nil
}

func newTestPool(blockSize, limit int64) (*pool, *fakeBlocks) {
	f := &fakeBlocks{}
	return newPool(blockSize, limit, f.grow, f.release), f
}

// checkPool verifies the pool's invariants: each block is tiled by its
// spans, no two free spans touch, the bins hold exactly the free spans
// (in the right class), live allocations are the used spans and the
// statistics agree.
func checkPool(t *testing.T, p *pool) {
	t.Helper()
	inBins := map[*span]bool{}
	for c, b := range p.bins {
		for i, s := range b {
			if !s.free || s.class != c || s.pos != i || classOf(s.size/ArenaAlign) != c {
				t.Fatalf("bin %d slot %d: span %+v misfiled", c, i, *s)
			}
			inBins[s] = true
		}
	}
	var reserved, inUse int64
	used := 0
	for _, b := range p.blocks {
		reserved += b.size
		var off int64
		var prev *span
		for s := b.first; s != nil; s = s.next {
			if s.off != off || s.blk != b || s.prev != prev || s.size <= 0 || s.size%ArenaAlign != 0 {
				t.Fatalf("block %#x: span chain broken at offset %d: %+v", b.base, off, *s)
			}
			if s.free {
				if prev != nil && prev.free {
					t.Fatalf("block %#x: adjacent free spans at %d", b.base, s.off)
				}
				if !inBins[s] {
					t.Fatalf("free span at %d not in a bin", s.off)
				}
				delete(inBins, s)
			} else {
				if p.live[b.base+uint64(s.off)] != s {
					t.Fatalf("used span at %d not live", s.off)
				}
				inUse += s.size
				used++
			}
			off += s.size
			prev = s
		}
		if off != b.size {
			t.Fatalf("block %#x: spans cover %d of %d bytes", b.base, off, b.size)
		}
	}
	if len(inBins) != 0 {
		t.Fatalf("%d binned spans belong to no block", len(inBins))
	}
	st := p.stats()
	if st.Reserved != reserved || st.InUse != inUse || st.Live != used || len(p.live) != used || st.Blocks != len(p.blocks) {
		t.Fatalf("stats %+v disagree: reserved %d in use %d live %d blocks %d", st, reserved, inUse, used, len(p.blocks))
	}
}

func TestArenaClasses(t *testing.T) {
	prev := -1
	for u := int64(1); u < 1<<16; u++ {
		c := classOf(u)
		if c < prev || c > prev+1 {
			t.Fatalf("classOf(%d) = %d after %d: not contiguous", u, c, prev)
		}
		prev = c
		if lo, hi := classMin(c), classMin(c+1); u < lo || u >= hi {
			t.Fatalf("classOf(%d) = %d covers [%d, %d)", u, c, lo, hi)
		}
	}
	for c := 7; c < nClasses-1; c++ {
		lo, hi := classMin(c), classMin(c+1)
		if classOf(lo) != c || 4*(hi-lo) > lo { // classes at most 25% wide
			t.Fatalf("class %d = [%d, %d)", c, lo, hi)
		}
	}
	if c := classOf(maxSpan / ArenaAlign); c != nClasses-1 {
		t.Fatalf("largest span in class %d, want %d", c, nClasses-1)
	}
}

func TestArenaPool(t *testing.T) {
	const K, M = 1 << 10, 1 << 20
	type op struct {
		alloc int64 // > 0: allocate, keep under name
		free  string
		name  string
		want  string // expected address: "+<off>" from the first block, or the name of an earlier allocation
	}
	tests := []struct {
		name    string
		block   int64
		ops     []op
		grown   []int64
		inUse   int64
		spans   int
		wantErr string
	}{
		{name: "alignment", block: 4 * M, ops: []op{
			{alloc: 1, name: "a", want: "+0"}, {alloc: 1, name: "b", want: "+256"}, {alloc: 257, name: "c", want: "+512"}, {alloc: 256, name: "d", want: "+1024"},
		}, grown: []int64{4 * M}, inUse: 256 + 256 + 512 + 256, spans: 1},
		{name: "reuse", block: 4 * M, ops: []op{
			{alloc: 1000, name: "a", want: "+0"}, {alloc: 5000, name: "b"}, {free: "a"}, {alloc: 900, name: "c", want: "a"}, {free: "c"}, {alloc: 1000, name: "d", want: "a"},
		}, grown: []int64{4 * M}, inUse: 1024 + 5120, spans: 1},
		{name: "merge", block: 4 * M, ops: []op{
			{alloc: K, name: "a"}, {alloc: K, name: "b"}, {alloc: K, name: "c"}, {alloc: K, name: "d"},
			{free: "a"}, {free: "b"}, {alloc: 2 * K, name: "e", want: "a"}, {free: "e"}, {free: "c"}, {free: "d"},
		}, grown: []int64{4 * M}, inUse: 0, spans: 1},
		{name: "best fit", block: 4 * M, ops: []op{
			{alloc: 4 * K, name: "big"}, {alloc: K, name: "x"}, {alloc: 2 * K, name: "small"}, {alloc: K, name: "y"},
			{free: "big"}, {free: "small"}, {alloc: 2 * K, name: "z", want: "small"},
		}, grown: []int64{4 * M}, inUse: 4 * K, spans: 2},
		{name: "large request gets its own block", block: 4 * M, ops: []op{
			{alloc: K, name: "a", want: "+0"}, {alloc: 6 * M, name: "big"}, {alloc: 6 * K, name: "b", want: "+1024"},
		}, grown: []int64{4 * M, 6 * M}, inUse: 7*K + 6*M, spans: 1},
		{name: "small request prefers the tighter tail", block: 4 * M, ops: []op{
			{alloc: K, name: "a", want: "+0"}, {alloc: 5*M + 1, name: "big"}, {alloc: 6 * K, name: "b", want: "big+5243136"}, {alloc: K, name: "c", want: "b+6144"},
		}, grown: []int64{4 * M, 6 * M}, inUse: 8*K + 5*M + 256, spans: 2},
		{name: "new block when the first is full", block: 2 * M, ops: []op{
			{alloc: M, name: "a"}, {alloc: M, name: "b"}, {alloc: K, name: "c"},
		}, grown: []int64{2 * M, 2 * M}, inUse: 2*M + K, spans: 1},
		{name: "zero size", block: 4 * M, ops: []op{{alloc: -1}}, wantErr: "allocation of 0 bytes"},
		{name: "double free", block: 4 * M, ops: []op{{alloc: K, name: "a"}, {free: "a"}, {free: "a"}}, wantErr: "not a live allocation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, f := newTestPool(tt.block, 0)
			addr := map[string]uint64{}
			size := map[string]int64{}
			var err error
			for _, o := range tt.ops {
				switch {
				case o.free != "":
					err = p.free(addr[o.free], size[o.free])
				case o.alloc == -1:
					_, err = p.alloc(0)
				default:
					var a uint64
					a, err = p.alloc(o.alloc)
					if err == nil {
						if a%ArenaAlign != 0 {
							t.Fatalf("%s at %#x: not aligned", o.name, a)
						}
						// want: "[name]+off" (from the first block when
						// name is empty) or "name".
						want := uint64(0)
						if name, off, ok := strings.Cut(o.want, "+"); ok {
							n, err := strconv.Atoi(off)
							if err != nil {
								t.Fatal(err)
							}
							want = p.blocks[0].base + uint64(n)
							if name != "" {
								want = addr[name] + uint64(n)
							}
						} else if o.want != "" {
							want = addr[o.want]
						}
						if want != 0 && a != want {
							t.Fatalf("%s at %#x, want %#x (%s)", o.name, a, want, o.want)
						}
						addr[o.name], size[o.name] = a, o.alloc
					}
				}
				if err != nil {
					break
				}
				checkPool(t, p)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st := p.stats()
			if st.InUse != tt.inUse || st.FreeSpans != tt.spans || !slices.Equal(f.grown, tt.grown) {
				t.Fatalf("in use %d free spans %d grown %v, want %d %d %v", st.InUse, st.FreeSpans, f.grown, tt.inUse, tt.spans, tt.grown)
			}
		})
	}
}

func TestArenaPoolStats(t *testing.T) {
	const K = 1 << 10
	p, _ := newTestPool(1<<20, 0)
	var addrs []uint64
	for range 64 {
		a, err := p.alloc(K + 1) // 1280 bytes each
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, a)
	}
	st := p.stats()
	if st.Live != 64 || st.InUse != 64*1280 || st.Requested != 64*(K+1) || st.Peak != st.InUse || st.Allocs != 64 || st.Grows != 1 {
		t.Fatalf("after 64 allocs: %+v", st)
	}
	before := st.Fragmentation()
	for i := 0; i < 64; i += 2 { // every other one: 32 holes
		if err := p.free(addrs[i], K+1); err != nil {
			t.Fatal(err)
		}
	}
	checkPool(t, p)
	st = p.stats()
	if st.FreeSpans != 33 || st.Frees != 32 || st.Peak != 64*1280 || st.InUse != 32*1280 {
		t.Fatalf("after freeing half: %+v", st)
	}
	// 32 holes of 1280 bytes and the block's tail (blocks are 2 MiB at
	// least): the largest span is the tail.
	tail := int64(2<<20 - 64*1280)
	if want := 1 - float64(tail)/float64(tail+32*1280); before != 0 || st.LargestFree != tail || st.Fragmentation() != want {
		t.Fatalf("fragmentation %.4f (before %.4f), want %.4f", st.Fragmentation(), before, want)
	}
	for i := 1; i < 64; i += 2 {
		if err := p.free(addrs[i], K+1); err != nil {
			t.Fatal(err)
		}
	}
	checkPool(t, p)
	st = p.stats()
	if st.FreeSpans != 1 || st.Fragmentation() != 0 || st.Free != st.Reserved || st.Requested != 0 {
		t.Fatalf("after freeing all: %+v", st)
	}
	if s := st.String(); !strings.Contains(s, "1 blocks") || !strings.Contains(s, "fragmentation 0.00") {
		t.Fatalf("String() = %q", s)
	}
}

func TestArenaPoolResetDeterministic(t *testing.T) {
	p, f := newTestPool(1<<20, 0)
	sizes := []int64{300, 70000, 1 << 19, 5, 40000, 1 << 20, 123456}
	run := func() []uint64 {
		var out []uint64
		for i, n := range sizes {
			a, err := p.alloc(n)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, a)
			if i == 3 {
				if err := p.free(out[1], sizes[1]); err != nil {
					t.Fatal(err)
				}
			}
		}
		return out
	}
	first := run()
	p.reset()
	checkPool(t, p)
	if st := p.stats(); st.Live != 0 || st.InUse != 0 || st.FreeSpans != st.Blocks || st.Resets != 1 {
		t.Fatalf("after reset: %+v", st)
	}
	grown := len(f.grown)
	second := run()
	for i := range first {
		if first[i] != second[i] {
			t.Fatalf("allocation %d at %#x after Reset, %#x before", i, second[i], first[i])
		}
	}
	if len(f.grown) != grown {
		t.Fatalf("Reset then the same allocations grew the pool (%d -> %d blocks)", grown, len(f.grown))
	}
}

func TestArenaPoolLimitReserveTrim(t *testing.T) {
	const M = 1 << 20
	p, f := newTestPool(2*M, 5*M)
	a, err := p.alloc(2 * M)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.alloc(2 * M); err != nil {
		t.Fatal(err)
	}
	// 4 MiB reserved of 5: the last block is capped at 1 MiB.
	if err := p.reserve(M); err != nil {
		t.Fatal(err)
	}
	if got := f.grown; !slices.Equal(got, []int64{2 * M, 2 * M, M}) {
		t.Fatalf("grown %v", got)
	}
	if _, err := p.alloc(M + 1); err == nil || !strings.Contains(err.Error(), "limit of 5242880 bytes") {
		t.Fatalf("alloc past the limit: %v", err)
	}
	if err := p.reserve(M); err != nil { // already there: no growth
		t.Fatal(err)
	}
	if len(f.grown) != 3 {
		t.Fatalf("reserve of available memory grew the pool: %v", f.grown)
	}
	if err := p.free(a, 2*M); err != nil {
		t.Fatal(err)
	}
	freed, err := p.trim()
	if err != nil {
		t.Fatal(err)
	}
	if freed != 3*M || len(f.released) != 2 || p.stats().Blocks != 1 {
		t.Fatalf("trim freed %d, released %v, %d blocks left", freed, f.released, p.stats().Blocks)
	}
	checkPool(t, p)
	f.fail = errors.New("out of memory")
	if _, err := p.alloc(2 * M); !errors.Is(err, f.fail) {
		t.Fatalf("grow failure not returned: %v", err)
	}
	checkPool(t, p)
}

func TestArenaPoolRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	p, _ := newTestPool(1<<20, 0)
	type live struct {
		addr uint64
		n    int64
	}
	var ls []live
	steps := 3000
	if testing.Short() {
		steps = 600
	}
	for step := range steps {
		switch k := r.IntN(100); {
		case k < 55 || len(ls) == 0:
			n := int64(1 + r.IntN(1<<uint(4+r.IntN(15))))
			a, err := p.alloc(n)
			if err != nil {
				t.Fatal(err)
			}
			ls = append(ls, live{a, n})
		case k < 98:
			i := r.IntN(len(ls))
			if err := p.free(ls[i].addr, ls[i].n); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			ls = append(ls[:i], ls[i+1:]...)
		default:
			p.reset()
			ls = ls[:0]
		}
		if step%50 == 0 || step == steps-1 {
			checkPool(t, p)
			sort.Slice(ls, func(i, j int) bool { return ls[i].addr < ls[j].addr })
			var req int64
			for i, l := range ls {
				req += l.n
				if i > 0 && ls[i-1].addr+uint64(ls[i-1].n) > l.addr {
					t.Fatalf("step %d: allocations at %#x (+%d) and %#x overlap", step, ls[i-1].addr, ls[i-1].n, l.addr)
				}
			}
			if st := p.stats(); st.Requested != req || st.InUse < req || st.Peak < st.InUse {
				t.Fatalf("step %d: stats %+v, requested %d", step, st, req)
			}
		}
	}
	if st := p.stats(); st.Allocs == 0 || st.Frees == 0 || st.Reserved > 64<<20 {
		t.Fatalf("random run: %+v", st)
	}
}

// TestArenaPoolExactBlock checks the last try of a tight allocation: a new
// block of just the size needed (ArenaAlign-rounded), not the 2 MiB-rounded
// or BlockSize one, so a nearly full card still fits what it can.
func TestArenaPoolExactBlock(t *testing.T) {
	const n = 4_700_000 // bytes
	for _, tc := range []struct {
		name  string
		exact bool
		want  int64
	}{
		{"normal growth", false, 256 << 20},
		{"exact last try", true, alignUp(n, ArenaAlign)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, f := newTestPool(256<<20, 0)
			p.exact = tc.exact
			if _, err := p.alloc(n); err != nil {
				t.Fatal(err)
			}
			if len(f.grown) != 1 || f.grown[0] != tc.want {
				t.Fatalf("blocks grown %v, want [%d]", f.grown, tc.want)
			}
			checkPool(t, p)
		})
	}
}
