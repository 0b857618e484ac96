// scratch.go: a pool of float32 scratch buffers (im2col columns, attention
// score blocks) so steady-state forward passes do not allocate them anew.
// Buffers are not zeroed; callers overwrite what they use. It does not cap
// the pool's total size (sync.Pool drops idle buffers at GC).
package nn

import "sync"

var scratchPool sync.Pool

// getScratch returns a buffer of length n (contents undefined).
func getScratch(n int) *[]float32 {
	if p, ok := scratchPool.Get().(*[]float32); ok && cap(*p) >= n {
		*p = (*p)[:n]
		return p
	}
	s := make([]float32, n)
	return &s
}

// putScratch returns a buffer to the pool.
func putScratch(p *[]float32) { scratchPool.Put(p) }
