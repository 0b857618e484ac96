// counters.go: the stand-in driver's per-call counters, read from Go, so a
// test can assert a budget (syncs, bytes over "PCIe", launches) directly
// instead of trusting the code's own bookkeeping. Counters reads this
// process's (sdbFakeCounters in the loaded libcuda-fake.so, through
// purego); with SDBRIDGE_FAKE_COUNTERS_DIR set (CountersDir sets it for
// the processes this one starts), every process using the stand-in writes
// its counters to DIR/<pid> at each stream, context or event
// synchronisation, and ReadCountersDir reads them: a plugin process's
// counts as of its last sync (the SDK syncs once before each reply).
//
// Counts are of calls issued by the process: a launch or copy recorded
// into a graph capture counts once, at capture, and each replay counts as
// one graph launch. It does not count cuBLAS/cuBLASLt calls by kind (they
// show as HostWork when queued on a stream) and does nothing without the
// stand-in driver (ErrNoCounters).
package cudatest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/ebitengine/purego"
)

// Counters are the stand-in driver's per-process call counts (the field
// order is fakecuda.c's CNT_* order).
type Counters struct {
	StreamSyncs   int64 // cuStreamSynchronize
	CtxSyncs      int64 // cuCtxSynchronize
	EventSyncs    int64 // cuEventSynchronize
	HtoDCalls     int64 // cuMemcpyHtoD_v2 and cuMemcpyHtoDAsync_v2
	HtoDBytes     int64
	DtoHCalls     int64 // cuMemcpyDtoH_v2 and cuMemcpyDtoHAsync_v2
	DtoHBytes     int64
	DtoDCalls     int64 // cuMemcpyDtoD_v2 and cuMemcpyDtoDAsync_v2
	DtoDBytes     int64
	Memsets       int64 // cuMemsetD8/D32, sync and async
	Launches      int64 // cuLaunchKernel
	GraphLaunches int64 // cuGraphLaunch
	HostWork      int64 // other stand-ins' stream work (cuBLAS GEMMs, cuBLASLt matmuls)
	Allocs        int64 // cuMemAlloc_v2
	Frees         int64 // cuMemFree_v2
}

// nCounters is the number of fields of Counters.
const nCounters = 15

// ErrNoCounters says the process has no stand-in driver with counters.
var ErrNoCounters = errors.New("cudatest: no stand-in driver with counters in this process (SDBRIDGE_CUDA_DRIVER, loaded by cuda.Open)")

// Syncs is every synchronising call: stream, context and event syncs.
func (c Counters) Syncs() int64 { return c.StreamSyncs + c.CtxSyncs + c.EventSyncs }

// Sub returns c - o, field by field (counts between two snapshots).
func (c Counters) Sub(o Counters) Counters {
	a, b := c.slice(), o.slice()
	var out [nCounters]int64
	for i := range out {
		out[i] = a[i] - b[i]
	}
	return fromSlice(out[:])
}

// String is a one-line account.
func (c Counters) String() string {
	return fmt.Sprintf("syncs %d stream + %d ctx + %d event; HtoD %d calls %d B; DtoH %d calls %d B; DtoD %d calls %d B; %d memsets; %d launches, %d graph launches, %d host work; %d allocs, %d frees",
		c.StreamSyncs, c.CtxSyncs, c.EventSyncs, c.HtoDCalls, c.HtoDBytes, c.DtoHCalls, c.DtoHBytes, c.DtoDCalls, c.DtoDBytes, c.Memsets, c.Launches, c.GraphLaunches, c.HostWork, c.Allocs, c.Frees)
}

func (c Counters) slice() [nCounters]int64 {
	return [nCounters]int64{c.StreamSyncs, c.CtxSyncs, c.EventSyncs, c.HtoDCalls, c.HtoDBytes, c.DtoHCalls, c.DtoHBytes,
		c.DtoDCalls, c.DtoDBytes, c.Memsets, c.Launches, c.GraphLaunches, c.HostWork, c.Allocs, c.Frees}
}

func fromSlice(v []int64) Counters {
	return Counters{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13], v[14]}
}

var (
	countersOnce sync.Once
	countersFn   func(out *uint64, n int32) int32
	countersErr  error
)

// ReadCounters returns this process's counters so far. The driver must be
// the stand-in named by SDBRIDGE_CUDA_DRIVER (a RunChild child); loading
// it here returns the handle cuda.Open already holds.
func ReadCounters() (Counters, error) {
	countersOnce.Do(func() {
		path := os.Getenv("SDBRIDGE_CUDA_DRIVER")
		if path == "" {
			countersErr = ErrNoCounters
			return
		}
		h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err != nil {
			countersErr = fmt.Errorf("%w: %v", ErrNoCounters, err)
			return
		}
		sym, err := purego.Dlsym(h, "sdbFakeCounters")
		if err != nil {
			countersErr = fmt.Errorf("%w: %v", ErrNoCounters, err)
			return
		}
		purego.RegisterFunc(&countersFn, sym)
	})
	if countersErr != nil {
		return Counters{}, countersErr
	}
	var buf [nCounters]uint64
	if n := countersFn(&buf[0], nCounters); n < nCounters {
		return Counters{}, fmt.Errorf("cudatest: the stand-in driver keeps %d counters, want %d (stale build?)", n, nCounters)
	}
	var v [nCounters]int64
	for i, x := range buf {
		v[i] = int64(x)
	}
	return fromSlice(v[:]), nil
}

// CountersDir makes a folder for counter dumps and sets
// SDBRIDGE_FAKE_COUNTERS_DIR to it in this process's environment, so the
// processes it starts from now on (plugins) dump their counters there at
// each synchronisation (this process does too).
func CountersDir(t interface {
	TempDir() string
	Setenv(k, v string)
}) string {
	dir := t.TempDir()
	t.Setenv("SDBRIDGE_FAKE_COUNTERS_DIR", dir)
	return dir
}

// ReadCountersDir reads the dumps in dir: each process's counters (by pid)
// as of its last synchronisation.
func ReadCountersDir(dir string) (map[int]Counters, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("cudatest: counter dumps: %w", err)
	}
	out := map[int]Counters{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue // a temporary file being written
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("cudatest: counter dump: %w", err)
		}
		f := strings.Fields(string(b))
		if len(f) != nCounters {
			return nil, fmt.Errorf("cudatest: counter dump %s has %d fields, want %d", e.Name(), len(f), nCounters)
		}
		var v [nCounters]int64
		for i, s := range f {
			if v[i], err = strconv.ParseInt(s, 10, 64); err != nil {
				return nil, fmt.Errorf("cudatest: counter dump %s: %w", e.Name(), err)
			}
		}
		out[pid] = fromSlice(v[:])
	}
	return out, nil
}
