// symbols_test.go: optional entry points without any library: the new
// driver and cuBLASLt entries are optional in their tables (an old driver
// still loads), and every API built on them returns an error naming the
// missing symbol instead of calling a nil function.
package cuda

import (
	"errors"
	"strings"
	"testing"
	"unsafe"
)

func TestOptionalSymbolsInTables(t *testing.T) {
	optional := map[string]bool{}
	for _, s := range (&driverAPI{}).syms() {
		optional[s.name] = s.optional
	}
	for _, s := range (&ltAPI{}).syms() {
		optional[s.name] = s.optional
	}
	for _, name := range []string{
		"cuMemGetAddressRange_v2", "cuEventCreate", "cuEventRecord", "cuEventSynchronize", "cuEventElapsedTime_v2",
		"cuEventElapsedTime", "cuEventDestroy_v2", "cuMemcpyHtoDAsync_v2", "cuMemcpyDtoHAsync_v2", "cuMemcpyDtoDAsync_v2",
		"cuMemsetD8Async", "cuMemsetD32Async", "cuMemHostAlloc", "cuMemFreeHost", "cuMemHostRegister_v2", "cuMemHostUnregister",
		"cuStreamBeginCapture_v2", "cuStreamEndCapture", "cuStreamIsCapturing", "cuGraphInstantiateWithFlags",
		"cuGraphLaunch", "cuGraphExecDestroy", "cuGraphDestroy",
		"cublasLtGetVersion", "cublasLtMatmulPreferenceCreate", "cublasLtMatmulPreferenceDestroy",
		"cublasLtMatmulPreferenceSetAttribute", "cublasLtMatmulAlgoGetHeuristic",
	} {
		opt, ok := optional[name]
		if !ok {
			t.Errorf("%s is not in a symbol table", name)
		} else if !opt {
			t.Errorf("%s is required: a driver without it would not load", name)
		}
	}
}

func TestNeed(t *testing.T) {
	a := &driverAPI{path: "libcuda-old.so"}
	a.cuEventCreate = func(*uintptr, uint32) Result { return 0 }
	if err := need(a, "cuEventCreate"); err != nil {
		t.Fatalf("bound symbol: %v", err)
	}
	err := need(a, "cuEventCreate", "cuEventRecord")
	var me *MissingSymbolError
	if !errors.As(err, &me) || me.Symbol != "cuEventRecord" || me.Lib != "libcuda-old.so" || !errors.Is(err, ErrMissingSymbol) {
		t.Fatalf("need(unbound) = %v", err)
	}
	if !strings.Contains(err.Error(), "libcuda-old.so has no cuEventRecord") {
		t.Fatalf("message %q does not name the library and the symbol", err)
	}
	if err := need(a, "cuNoSuchThing"); err == nil || !strings.Contains(err.Error(), "not in the symbol table") {
		t.Fatalf("need(unknown name) = %v", err)
	}
	if (&ltAPI{path: "x"}).heuristics() {
		t.Fatal("heuristics() true with nothing bound")
	}
}

// TestMissingSymbolErrors calls every API of this package that needs an
// optional entry point on a device whose driver has none of them: each
// must fail with the symbol's name before reaching the device thread (the
// Device has none, so a call through Do would hang).
func TestMissingSymbolErrors(t *testing.T) {
	d := &Device{api: &driverAPI{path: "libcuda-old.so"}}
	b := &Buffer{dev: d, Ptr: 1 << 20, Size: 1024}
	hb := make([]byte, 1024)
	h := &HostBuffer{dev: d, Size: len(hb), p: unsafe.Pointer(&hb[0])}
	tests := []struct {
		name, sym string
		call      func() error
	}{
		{"NewEvent", "cuEventCreate", func() error { _, err := d.NewEvent(true); return err }},
		{"Time", "cuEventCreate", func() error { _, err := d.Time(func() error { return nil }); return err }},
		{"Capture", "cuStreamBeginCapture_v2", func() error { _, err := d.Capture(func() error { return nil }); return err }},
		{"AllocHost", "cuMemHostAlloc", func() error { _, err := d.AllocHost(64); return err }},
		{"PinHost", "cuMemHostRegister_v2", func() error { _, err := d.PinHost(hb, true); return err }},
		{"NewStager", "cuMemcpyHtoDAsync_v2", func() error { _, err := d.NewStager(0, 0); return err }},
		{"CopyFromAsync", "cuMemcpyDtoDAsync_v2", func() error { return b.CopyFromAsync(b, 8) }},
		{"ZeroAsync", "cuMemsetD8Async", func() error { return b.ZeroAsync() }},
		{"FillUint32Async", "cuMemsetD32Async", func() error { return b.FillUint32Async(1, 4) }},
		{"UploadAsync", "cuMemcpyHtoDAsync_v2", func() error { return b.UploadAsync(h, 0, 8) }},
		{"DownloadAsync", "cuMemcpyDtoHAsync_v2", func() error { return b.DownloadAsync(h, 0, 8) }},
		{"ExportIPC", "cuMemGetAddressRange_v2", func() error { _, err := b.ExportIPC(); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			var me *MissingSymbolError
			if !errors.As(err, &me) || me.Symbol != tt.sym {
				t.Fatalf("error = %v, want one naming %s", err, tt.sym)
			}
		})
	}
}
