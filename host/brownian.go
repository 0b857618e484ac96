// brownian.go is a Brownian motion on [t0, t1] with the sample path of
// torchsde's BrownianTree for a given entropy (seed): torchsde's
// BrownianInterval with halfway_tree=True, tol=1e-6, pool_size=24 and no Levy
// area, which is what k-diffusion's BrownianTreeNoiseSampler builds.
//
// The path is a binary tree of intervals. The root holds W(t0, t1) =
// sqrt(t1-t0) * randn; a parent [s, e] with midpoint m (the halfway point
// rounded to 6 decimals, as Python's round(x, 6)) draws its left child's
// increment from the Brownian bridge, W(s, m) = W(s, e)*(m-s)/(e-s) +
// sqrt((m-s)(e-m)/(e-s)) * randn, and the right child gets W(s, e) - W(s, m).
// Each randn is a fresh torch CPU generator (mt19937) seeded with the first
// word of numpy SeedSequence(entropy, spawn_key=(key, depth), pool_size=24),
// key and depth giving the parent's place in the tree. A query [ta, tb] is
// split into the tree's canonical intervals (splitting at halfway points
// until ta and tb are midpoints) and their increments summed left to right.
// Arithmetic is float32 in torch's order: on the fixtures of brownian_test.go
// the noise equals torchsde's bit for bit. The bridge draws along a path are
// independent, so they run in parallel; both children of a split are kept,
// and increments are cached for the most recent intervals only (45 to 256 of
// them, within 64 MiB), which cuts the draws per sampler step about threefold
// against torchsde's cache; evicted ones are recomputed identically.
//
// It does not implement torchsde's Levy areas (space-time, Davie, Foster),
// the non-halfway dependency tree of a plain BrownianInterval, or CUDA
// generators.
package host

import (
	"fmt"
	"math"
	"runtime"
	"strconv"
	"sync"
)

// The pool size is torchsde BrownianTree's default (part of the seeding);
// the cache sizes are ours and do not change values.
const (
	brownianPoolSize   = 24       // SeedSequence pool_size
	brownianCacheMin   = 45       // increments kept at least (torchsde's LRU size)
	brownianCacheMax   = 256      // and at most
	brownianCacheBytes = 64 << 20 // budget between the two
	brownianMaxDepth   = 62       // spawn keys must fit a uint64
)

// brownianRound is torchsde's rounding for tol=1e-6: Python's round(x, 6),
// correctly rounded from the exact binary value, ties to even.
func brownianRound(x float64) float64 {
	r, err := strconv.ParseFloat(strconv.FormatFloat(x, 'f', 6, 64), 64)
	if err != nil {
		return x // unreachable for finite x
	}
	return r
}

// brownianNode is one interval of the tree.
type brownianNode struct {
	start, end float64 // rounded edges
	parent     *brownianNode
	isLeft     bool

	// Set once the node is split.
	split       bool
	midway      float64
	wSeed       uint32 // seed of the bridge noise for the left child
	key         uint64 // spawn key: 2*parent.key + (0 left, 1 right), root 0
	depth       int
	left, right *brownianNode

	w []float32 // cached increment over [start, end], nil when not held
}

// BrownianTree is one Brownian path of a fixed shape over [t0, t1].
type BrownianTree struct {
	numel   int
	entropy uint64
	randn   func(seed uint32, out []float32)
	root    *brownianNode
	held    []*brownianNode // nodes whose w is cached, oldest first
	maxHeld int
}

// NewBrownianTree is torchsde.BrownianTree(t0, zeros(numel), t1,
// entropy=seed) for float32 on the CPU: its noise comes from torch's CPU
// generator (TorchGenerator). t0 < t1 are used as given (callers widen their
// float32 times to float64, as Python's float() does).
func NewBrownianTree(t0, t1 float64, numel int, seed uint64) (*BrownianTree, error) {
	return newBrownianTree(t0, t1, numel, seed, func(s uint32, out []float32) {
		NewTorchGenerator(uint64(s)).Randn(out)
	})
}

func newBrownianTree(t0, t1 float64, numel int, seed uint64, randn func(uint32, []float32)) (*BrownianTree, error) {
	if !(t0 < t1) || math.IsInf(t0, 0) || math.IsInf(t1, 0) {
		return nil, fmt.Errorf("brownian tree: need finite t0 < t1, got [%v, %v]", t0, t1)
	}
	if numel < 1 {
		return nil, fmt.Errorf("brownian tree: %d elements", numel)
	}
	// A query walks down to both its ends (about 25 levels each for SD
	// sigmas); keeping a few queries' worth of increments lets the next
	// query, which shares an end, reuse them. Values do not depend on it.
	maxHeld := min(max(brownianCacheBytes/(4*numel), brownianCacheMin), brownianCacheMax)
	b := &BrownianTree{numel: numel, entropy: seed, randn: randn, maxHeld: maxHeld}
	b.root = &brownianNode{start: brownianRound(t0), end: brownianRound(t1)}
	// The root's increment: SeedSequence(entropy).generate_state(3)[0]; the
	// other two words seed the unused space-time Levy area.
	seeds := seedSequenceState(seed, nil, brownianPoolSize, 3)
	w := make([]float32, numel) // [numel]
	randn(seeds[0], w)
	scale := float32(math.Sqrt(t1 - t0)) // unrounded t1 - t0, as torchsde
	for i := range w {
		w[i] *= scale
	}
	b.root.w = w // always held
	return b, nil
}

// Increment returns W(tb) - W(ta) for ta <= tb (both clamped to the tree's
// range, as torchsde does with a warning). ta == tb gives zeros.
func (b *BrownianTree) Increment(ta, tb float64) ([]float32, error) {
	if math.IsNaN(ta) || math.IsNaN(tb) || ta > tb {
		return nil, fmt.Errorf("brownian tree: query [%v, %v] is not an interval", ta, tb)
	}
	ta = min(max(ta, b.root.start), b.root.end)
	tb = min(max(tb, b.root.start), b.root.end)
	out := make([]float32, b.numel) // [numel]
	if ta == tb {
		return out, nil
	}
	ta, tb = brownianRound(ta), brownianRound(tb)
	if ta == tb {
		return out, nil // closer than the 1e-6 tolerance (torchsde recurses without end)
	}
	var parts []*brownianNode
	if err := b.locate(b.root, ta, tb, &parts); err != nil {
		return nil, err
	}
	for k, n := range parts {
		w, err := b.increment(n)
		if err != nil {
			return nil, err
		}
		if k == 0 {
			copy(out, w)
			continue
		}
		for i, v := range w {
			out[i] += v
		}
	}
	return out, nil
}

// locate appends to parts, left to right, the tree intervals that make up
// [ta, tb] inside n (torchsde _loc_inner from the root: the decomposition
// does not depend on where the search starts or on earlier queries).
func (b *BrownianTree) locate(n *brownianNode, ta, tb float64, parts *[]*brownianNode) error {
	for {
		if ta == n.start && tb == n.end {
			*parts = append(*parts, n)
			return nil
		}
		if !n.split {
			target := tb
			if ta != n.start {
				target = ta
			}
			if err := b.splitAt(n, target); err != nil {
				return err
			}
		}
		switch {
		case tb <= n.midway:
			n = n.left
		case ta >= n.midway:
			n = n.right
		default:
			if err := b.locate(n.left, ta, n.midway, parts); err != nil {
				return err
			}
			n, ta = n.right, n.midway
		}
	}
}

// splitAt splits n at its halfway point, then the child holding target, and
// so on until target is a split point (torchsde _split with halfway_tree).
func (b *BrownianTree) splitAt(n *brownianNode, target float64) error {
	for {
		if err := b.splitHalf(n); err != nil {
			return err
		}
		switch {
		case target > n.midway:
			n = n.right
		case target < n.midway:
			n = n.left
		default:
			return nil
		}
	}
}

// splitHalf creates n's children at its rounded halfway point and derives the
// bridge noise seed (torchsde _split_exact).
func (b *BrownianTree) splitHalf(n *brownianNode) error {
	if n.split {
		return nil
	}
	if p := n.parent; p != nil {
		n.key, n.depth = 2*p.key, p.depth+1
		if !n.isLeft {
			n.key++
		}
	}
	if n.depth > brownianMaxDepth {
		return fmt.Errorf("brownian tree: interval [%v, %v] is %d levels deep", n.start, n.end, n.depth)
	}
	mid := brownianRound(0.5 * (n.end + n.start))
	if !(mid > n.start && mid < n.end) {
		// torchsde would recurse forever here; the rounded grid makes it
		// unreachable for queries rounded the same way.
		return fmt.Errorf("brownian tree: cannot split [%v, %v] at %v", n.start, n.end, mid)
	}
	n.midway, n.split = mid, true
	n.wSeed = seedSequenceState(b.entropy, []uint64{n.key, uint64(n.depth)}, brownianPoolSize, 4)[0]
	n.left = &brownianNode{start: n.start, end: mid, parent: n, isLeft: true}
	n.right = &brownianNode{start: mid, end: n.end, parent: n}
	return nil
}

// increment returns W over n, computing it from the nearest ancestor whose
// increment is held (the root always is). The bridge noises of the levels in
// between come from independent generators, so they are drawn in parallel.
func (b *BrownianTree) increment(n *brownianNode) ([]float32, error) {
	var path []*brownianNode // n and its ancestors without a held increment
	for m := n; m.w == nil; m = m.parent {
		path = append(path, m)
	}
	if len(path) == 0 {
		return n.w, nil
	}
	noise := make([][]float32, len(path)) // [len(path)][numel] bridge noises
	var wg sync.WaitGroup
	slots := make(chan struct{}, runtime.GOMAXPROCS(0))
	for k, c := range path {
		noise[k] = make([]float32, b.numel)
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			b.randn(c.parent.wSeed, noise[k])
			<-slots
		}()
	}
	wg.Wait()
	cur := path[len(path)-1].parent.w // [numel] W of the held ancestor
	for k := len(path) - 1; k >= 0; k-- {
		c := path[k]
		p := c.parent
		hRec := 1 / (p.end - p.start)
		leftDiff, rightDiff := p.midway-p.start, p.end-p.midway
		a, r := float32(leftDiff), float32(hRec)
		sd := float32(math.Sqrt(leftDiff * rightDiff * hRec))
		// Both children come from the same draw: keep the sibling too, as
		// the next query's pieces are mostly siblings of this one's path.
		left := make([]float32, b.numel)  // [numel]
		right := make([]float32, b.numel) // [numel]
		for i, pw := range cur {
			// mean + sqrt(var)*noise, each product rounded as torch does (the
			// conversions also keep the compiler from fusing them).
			left[i] = float32(float32(pw*a)*r) + float32(sd*noise[k][i])
			right[i] = pw - left[i]
		}
		cur = right
		if c.isLeft {
			cur = left
		}
		// Hold the sibling first so that a tiny cache keeps c.
		if c.isLeft {
			b.hold(p.right, right)
			b.hold(c, left)
		} else {
			b.hold(p.left, left)
			b.hold(c, right)
		}
	}
	return cur, nil
}

// hold caches w on n, dropping the oldest cached increment beyond the cache
// size (never the root's).
func (b *BrownianTree) hold(n *brownianNode, w []float32) {
	if n.w != nil {
		return // already held (a sibling computed earlier)
	}
	n.w = w
	b.held = append(b.held, n)
	if len(b.held) > b.maxHeld {
		b.held[0].w = nil
		b.held = b.held[1:]
	}
}
