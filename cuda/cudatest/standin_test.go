// standin_test.go: the stand-in libraries checked on their own C API
// (testdata/standin_selftest.c: memory ranges, events, async copies,
// pinned memory, capture and graphs, fp16 GEMMs, cuBLASLt epilogues), and
// legacy IPC across processes through package cuda: a child exports a
// device allocation, a grandchild opens the handle, reads what the child
// wrote and writes back, and the child sees the write.
package cudatest_test

import (
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/cuda/cudatest"
)

// envValue returns KEY's value in env.
func envValue(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

func TestStandInSelfTest(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in a child")
	}
	env := cudatest.Build(t)
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler")
	}
	bin := filepath.Join(t.TempDir(), "selftest")
	if out, err := exec.Command(cc, "-O1", "-o", bin, "testdata/standin_selftest.c", "-ldl", "-lm").CombinedOutput(); err != nil {
		t.Fatalf("building the self-test: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, envValue(env, "SDBRIDGE_CUDA_LIB_DIR"))
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "ok") {
		t.Fatalf("stand-in self-test: %v\n%s", err, out)
	}
}

func TestIPCAcrossProcesses(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in a child")
	}
	env := cudatest.Build(t)
	cudatest.RunChild(t, "TestIPCExporterChild", env)
}

const ipcBytes = 3 * 4096

// TestIPCExporterChild allocates, fills and exports a buffer, runs
// TestIPCImporterChild in a further process with the handle, and checks
// the importer's writes.
func TestIPCExporterChild(t *testing.T) {
	if !cudatest.InChild() || os.Getenv("SDB_TEST_IPC_HANDLE") != "" {
		t.Skip("run by TestIPCAcrossProcesses")
	}
	d, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	b, err := d.Alloc(ipcBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free()
	data := make([]byte, ipcBytes)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := b.UploadBytes(data); err != nil {
		t.Fatal(err)
	}
	h, err := b.IPCHandle()
	if err != nil {
		t.Fatal(err)
	}
	cudatest.RunChild(t, "TestIPCImporterChild", []string{"SDB_TEST_IPC_HANDLE=" + hex.EncodeToString(h.Reserved[:])})
	got := make([]byte, ipcBytes)
	if err := b.DownloadBytes(got); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if want := byte(255 - i*7); got[i] != want {
			t.Fatalf("byte %d after the importer wrote = %d, want %d", i, got[i], want)
		}
	}
}

// TestIPCImporterChild opens the handle in SDB_TEST_IPC_HANDLE, checks the
// exporter's bytes and overwrites them.
func TestIPCImporterChild(t *testing.T) {
	hs := os.Getenv("SDB_TEST_IPC_HANDLE")
	if !cudatest.InChild() || hs == "" {
		t.Skip("run by TestIPCExporterChild")
	}
	raw, err := hex.DecodeString(hs)
	var h cuda.IPCHandle
	if err != nil || len(raw) != len(h.Reserved) {
		t.Fatalf("handle %q: %v", hs, err)
	}
	copy(h.Reserved[:], raw)
	d, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ib, err := d.OpenIPC(h, ipcBytes)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, ipcBytes)
	if err := ib.DownloadBytes(got); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if got[i] != byte(i*7) {
			t.Fatalf("imported byte %d = %d, want %d", i, got[i], byte(i*7))
		}
		got[i] = byte(255 - i*7)
	}
	if err := ib.UploadBytes(got); err != nil {
		t.Fatal(err)
	}
	if err := ib.Close(); err != nil {
		t.Fatal(err)
	}
}
