// counters_test.go: the stand-in driver's per-call counters (counters.go)
// against known sequences of package cuda calls: each step's delta must be
// exactly the calls and bytes it issues, a captured copy counts once at
// capture and a replay as one graph launch, and the dump another process
// would read (SDBRIDGE_FAKE_COUNTERS_DIR) equals this process's counters
// as of its last sync.
package cudatest_test

import (
	"errors"
	"os"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
)

func TestCounters(t *testing.T) {
	if !cudatest.InChild() {
		if _, err := cudatest.ReadCounters(); !errors.Is(err, cudatest.ErrNoCounters) {
			t.Fatalf("ReadCounters without the stand-in = %v, want ErrNoCounters", err)
		}
		cudatest.RunChild(t, "TestCounters", cudatest.Build(t))
		return
	}
	dir := cudatest.CountersDir(t)
	dev, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	const n = 4096 // bytes
	a, err := dev.Alloc(n)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Free()
	b, err := dev.Alloc(n)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free()
	host := make([]float32, n/4) // [n/4]
	var g *cuda.Graph
	defer func() { g.Close() }()
	steps := []struct {
		name string
		do   func() error
		want cudatest.Counters
	}{
		{"upload", func() error { return a.UploadFloat32(host) },
			cudatest.Counters{StreamSyncs: 1, HtoDCalls: 1, HtoDBytes: n}},
		{"async device copy", func() error { return b.CopyFromAsync(a, n) },
			cudatest.Counters{DtoDCalls: 1, DtoDBytes: n}},
		{"download", func() error { return b.DownloadFloat32(host) },
			cudatest.Counters{StreamSyncs: 1, DtoHCalls: 1, DtoHBytes: n}},
		{"async fill", func() error { return a.FillUint32Async(7, n/4) },
			cudatest.Counters{Memsets: 1}},
		{"capture of two copies", func() (err error) {
			g, err = dev.Capture(func() error {
				if err := b.CopyFromAsync(a, n); err != nil {
					return err
				}
				return a.CopyFromAsync(b, n/2)
			})
			return err
		}, cudatest.Counters{DtoDCalls: 2, DtoDBytes: n + n/2}},
		{"two replays", func() error {
			if err := g.Launch(); err != nil {
				return err
			}
			return g.Launch()
		}, cudatest.Counters{GraphLaunches: 2}},
		{"synchronize", dev.Synchronize, cudatest.Counters{StreamSyncs: 1}},
	}
	for _, st := range steps {
		before, err := cudatest.ReadCounters()
		if err != nil {
			t.Fatal(err)
		}
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		after, err := cudatest.ReadCounters()
		if err != nil {
			t.Fatal(err)
		}
		if d := after.Sub(before); d != st.want {
			t.Fatalf("%s: counted %s\nwant %s", st.name, d, st.want)
		}
	}
	// The last step was a sync: the dump holds the counters as of then.
	now, err := cudatest.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	dumps, err := cudatest.ReadCountersDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := dumps[os.Getpid()]; !ok || d != now {
		t.Fatalf("dump of pid %d: %v (found %v), want %s", os.Getpid(), d, ok, now)
	}
}
