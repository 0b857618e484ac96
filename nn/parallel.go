// parallel.go: the one parallel-for helper every kernel uses to spread work
// over all cores. It splits an index range into contiguous chunks, runs
// all but the last on goroutines and the last on the caller, and runs
// small ranges inline so tiny tensors pay no goroutine overhead. It does
// not keep a worker pool or balance work dynamically.
package nn

import (
	"runtime"
	"sync"
)

// workers is the number of chunks a large range is cut into.
func workers() int { return runtime.GOMAXPROCS(0) }

// parallelFor calls fn(lo, hi) over disjoint chunks covering [0, n). cost is
// the rough work per index (say, flops or bytes touched); ranges whose total
// cost is below minParallelCost run inline on the caller.
func parallelFor(n int, cost int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	p := workers()
	if p > n {
		p = n
	}
	if p <= 1 || n*max(cost, 1) < minParallelCost {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	for w := 0; w < p-1; w++ {
		lo, hi := w*n/p, (w+1)*n/p
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	fn((p-1)*n/p, n)
	wg.Wait()
}

// parallelTasks runs fn(i) for i in [0, n) with up to workers() goroutines
// taking tasks from a shared counter; use it when tasks vary in cost.
func parallelTasks(n int, cost int, fn func(i int)) {
	p := workers()
	if p > n {
		p = n
	}
	if p <= 1 || n*max(cost, 1) < minParallelCost {
		for i := 0; i < n; i++ {
			fn(i)
		}
		return
	}
	var mu sync.Mutex
	next := 0
	take := func() int {
		mu.Lock()
		defer mu.Unlock()
		i := next
		next++
		return i
	}
	var wg sync.WaitGroup
	run := func() {
		for i := take(); i < n; i = take() {
			fn(i)
		}
	}
	for w := 0; w < p-1; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			run()
		}()
	}
	run()
	wg.Wait()
}

// minParallelCost is the total work below which a loop stays on one core
// (a goroutine start and join costs a few microseconds).
const minParallelCost = 1 << 15
