// ipcview_fake_test.go: exporting views inside device allocations (an
// arena piece's rows, like one projection of a fused q/k/v weight, and a
// Slice of a plain cuMemAlloc buffer) through Arena.Export and
// Buffer.ExportIPC, opened and written by a second process over the
// stand-in's memfd-backed legacy IPC; and the views that must be refused.
package cuda

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
)

// ipcViewRows is the number of floats per projection of the fused weight.
const ipcViewRows = 8

// ipcViewMsg carries exports to the importing process.
type ipcViewMsg struct {
	Name                    string
	H                       string
	AllocSize, Offset, Size int
}

func TestIPCViews(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	cudatest.RunChild(t, "TestIPCViewsChild", cudatest.Build(t))
}

// ramp32 returns n floats from start, step 1.
func ramp32(start float32, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = start + float32(i)
	}
	return v
}

func TestIPCViewsChild(t *testing.T) {
	if !cudatest.InChild() || os.Getenv("SDBRIDGE_TEST_IPC_VIEWS") != "" {
		t.Skip("run by TestIPCViews")
	}
	d := rtOpen(t)
	const n = ipcViewRows
	a := d.NewArena(ArenaOptions{Name: "weights", BlockSize: 1 << 20, Limit: 1 << 20})
	defer a.Close()
	if _, err := a.Alloc(300); err != nil { // the fused weight is not at the block's start
		t.Fatal(err)
	}
	fused, err := a.Alloc(3 * n * 4) // q, k, v rows
	if err != nil {
		t.Fatal(err)
	}
	rtUpload32(t, fused, append(append(ramp32(1, n), ramp32(101, n)...), ramp32(201, n)...))
	k, _ := fused.Slice(n*4, n*4)
	plain := rtAlloc(t, d, 4096)
	rtUpload32(t, plain, ramp32(0, 1024))
	pv, _ := plain.Slice(1000, 64) // floats 250..265

	ak, err := a.Export(k)
	if err != nil {
		t.Fatalf("Arena.Export of the k view: %v", err)
	}
	bk, err := k.ExportIPC()
	if err != nil {
		t.Fatalf("ExportIPC of the k view: %v", err)
	}
	for _, tc := range []struct {
		name string
		x    IPCExport
		off  int
	}{
		{"arena k view", ak, 512 + n*4}, // 300 bytes round up to 512 (ArenaAlign 256)
		{"arena k view by address range", bk, 512 + n*4},
	} {
		if tc.x.Offset != tc.off || tc.x.Size != n*4 || tc.x.AllocSize != 1<<20 {
			t.Fatalf("%s: export %+v, want offset %d size %d in a %d-byte block", tc.name, tc.x, tc.off, n*4, 1<<20)
		}
	}
	px, err := pv.ExportIPC()
	if err != nil {
		t.Fatal(err)
	}
	if px.Offset != 1000 || px.Size != 64 || px.AllocSize < 4096 {
		t.Fatalf("plain view export %+v, want offset 1000 size 64", px)
	}

	t.Run("refused", func(t *testing.T) {
		freed, _ := a.Alloc(64)
		if err := a.Free(freed); err != nil {
			t.Fatal(err)
		}
		other := d.NewArena(ArenaOptions{Name: "other", BlockSize: 1 << 20})
		defer other.Close()
		foreign, err := other.Alloc(64)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			b    *Buffer
		}{
			{"past the fused weight", &Buffer{dev: d, Ptr: k.Ptr, Size: 3 * n * 4}},
			{"a freed piece", freed},
			{"another arena's piece", foreign},
			{"empty", &Buffer{dev: d, Ptr: k.Ptr}},
		} {
			if x, err := a.Export(tc.b); err == nil || !strings.Contains(err.Error(), "weights") {
				t.Errorf("Arena.Export of %s = %+v, %v; want an error naming the arena", tc.name, x, err)
			}
		}
		gone, err := d.Alloc(256)
		if err != nil {
			t.Fatal(err)
		}
		gv, _ := gone.Slice(16, 16)
		gone.Free()
		if x, err := gv.ExportIPC(); err == nil {
			t.Errorf("ExportIPC of a view into freed memory = %+v", x)
		}
	})

	var msgs []ipcViewMsg
	for _, x := range []struct {
		name string
		x    IPCExport
	}{{"k", ak}, {"plain", px}} {
		msgs = append(msgs, ipcViewMsg{x.name, hex.EncodeToString(x.x.Handle.Reserved[:]), x.x.AllocSize, x.x.Offset, x.x.Size})
	}
	js, _ := json.Marshal(msgs)
	cudatest.RunChild(t, "TestIPCViewsImportChild", []string{"SDBRIDGE_TEST_IPC_VIEWS=" + string(js)})

	// The importer negated exactly the exported views.
	want := append(append(ramp32(1, n), ramp32(101, n)...), ramp32(201, n)...)
	for i := n; i < 2*n; i++ {
		want[i] = -want[i]
	}
	got := rtDownload32(t, fused, 3*n)
	if !rtEqual32(got, want) {
		t.Fatalf("fused weight after the importer negated k = %v, want %v", got, want)
	}
	wantPlain := ramp32(0, 1024)
	for i := 250; i < 266; i++ {
		wantPlain[i] = -wantPlain[i]
	}
	if got := rtDownload32(t, plain, 1024); !rtEqual32(got, wantPlain) {
		t.Fatalf("plain buffer after the importer negated floats 250..265: %v", got[240:276])
	}
}

// TestIPCViewsImportChild opens the views exported by TestIPCViewsChild,
// checks their contents and negates them in place.
func TestIPCViewsImportChild(t *testing.T) {
	js := os.Getenv("SDBRIDGE_TEST_IPC_VIEWS")
	if !cudatest.InChild() || js == "" {
		t.Skip("run by TestIPCViewsChild")
	}
	var msgs []ipcViewMsg
	if err := json.Unmarshal([]byte(js), &msgs); err != nil {
		t.Fatal(err)
	}
	d := rtOpen(t)
	want := map[string][]float32{"k": ramp32(101, ipcViewRows), "plain": ramp32(250, 16)}
	for _, m := range msgs {
		x := IPCExport{AllocSize: m.AllocSize, Offset: m.Offset, Size: m.Size}
		h, err := hex.DecodeString(m.H)
		if err != nil || len(h) != len(x.Handle.Reserved) {
			t.Fatalf("%s: handle %q: %v", m.Name, m.H, err)
		}
		copy(x.Handle.Reserved[:], h)
		mapped, v, err := d.OpenIPCExport(x)
		if err != nil {
			t.Fatalf("%s: %v", m.Name, err)
		}
		got := rtDownload32(t, v, m.Size/4)
		if !rtEqual32(got, want[m.Name]) {
			t.Fatalf("%s view = %v, want %v", m.Name, got, want[m.Name])
		}
		for i := range got {
			got[i] = -got[i]
		}
		rtUpload32(t, v, got)
		if err := mapped.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
