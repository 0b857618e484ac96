// runtime_fake_test.go: the runtime pieces (events, async copies, pinned
// memory and the staging ring, the arena and its IPC export, graph
// capture, cuBLASLt) end to end against the stand-in libraries of package
// cudatest, in a child process (the driver loads once per process). The
// arena export is also opened from a second child process, through the
// stand-in's memfd-backed IPC. Skipped without a C/C++ compiler.
package cuda

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
)

func TestFakeRuntime(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	cudatest.RunChild(t, "TestFakeRuntimeChild", cudatest.Build(t))
}

// rtOpen opens the stand-in device in a child test.
func rtOpen(t *testing.T) *Device {
	t.Helper()
	d, err := Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func rtUpload32(t *testing.T, b *Buffer, v []float32) {
	t.Helper()
	if err := b.UploadFloat32(v); err != nil {
		t.Fatal(err)
	}
}

func rtDownload32(t *testing.T, b *Buffer, n int) []float32 {
	t.Helper()
	v := make([]float32, n)
	if err := b.DownloadFloat32(v); err != nil {
		t.Fatal(err)
	}
	return v
}

func rtAlloc(t *testing.T, d *Device, n int) *Buffer {
	t.Helper()
	b, err := d.Alloc(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Free() })
	return b
}

func TestFakeRuntimeChild(t *testing.T) {
	if !cudatest.InChild() || os.Getenv("SDBRIDGE_TEST_IPC_EXPORT") != "" {
		t.Skip("run by TestFakeRuntime")
	}
	d := rtOpen(t)

	t.Run("events", func(t *testing.T) {
		start, err := d.NewEvent(true)
		if err != nil {
			t.Fatal(err)
		}
		defer start.Close()
		end, _ := d.NewEvent(true)
		defer end.Close()
		sync, _ := d.NewEvent(false)
		defer sync.Close()
		if err := start.Record(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond) // the stand-in's events read host time
		if err := end.Record(); err != nil {
			t.Fatal(err)
		}
		el, err := Elapsed(start, end)
		if err != nil || el < time.Millisecond || el > time.Second {
			t.Fatalf("Elapsed = %v, %v (slept 2 ms)", el, err)
		}
		if _, err := Elapsed(start, sync); err == nil || !strings.Contains(err.Error(), "without timing") {
			t.Fatalf("Elapsed with a sync-only event: %v", err)
		}
		if err := sync.Record(); err != nil {
			t.Fatal(err)
		}
		if err := sync.Synchronize(); err != nil {
			t.Fatal(err)
		}
		el, err = d.Time(func() error { time.Sleep(time.Millisecond); return nil })
		if err != nil || el <= 0 {
			t.Fatalf("Time = %v, %v", el, err)
		}
		boom := errors.New("boom")
		if _, err := d.Time(func() error { return boom }); !errors.Is(err, boom) {
			t.Fatalf("Time of a failing function = %v", err)
		}
		if err := end.Close(); err != nil || end.Close() != nil {
			t.Fatal("double Close failed")
		}
		if err := end.Record(); err == nil {
			t.Fatal("Record of a closed event accepted")
		}
	})

	t.Run("async", func(t *testing.T) {
		a, b := rtAlloc(t, d, 64), rtAlloc(t, d, 64)
		rtUpload32(t, a, []float32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
		if err := b.CopyFromAsync(a, 32); err != nil {
			t.Fatal(err)
		}
		tail, _ := b.Slice(32, 32)
		if err := tail.FillUint32Async(math.Float32bits(-1), 8); err != nil {
			t.Fatal(err)
		}
		h, err := d.AllocHost(128)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Free()
		if err := b.DownloadAsync(h, 64, 64); err != nil {
			t.Fatal(err)
		}
		if err := d.Synchronize(); err != nil {
			t.Fatal(err)
		}
		got := rtFloats(h.Bytes()[64:128])
		want := []float32{1, 2, 3, 4, 5, 6, 7, 8, -1, -1, -1, -1, -1, -1, -1, -1}
		if !rtEqual32(got, want) {
			t.Fatalf("copy + fill = %v, want %v", got, want)
		}
		copy(h.Bytes(), rtBytes([]float32{42, 43}))
		if err := b.UploadAsync(h, 0, 8); err != nil {
			t.Fatal(err)
		}
		if got := rtDownload32(t, b, 3); !rtEqual32(got, []float32{42, 43, 3}) {
			t.Fatalf("UploadAsync = %v", got)
		}
		if err := b.ZeroAsync(); err != nil {
			t.Fatal(err)
		}
		if got := rtDownload32(t, b, 16); !rtEqual32(got, make([]float32, 16)) {
			t.Fatalf("ZeroAsync = %v", got)
		}
		for name, err := range map[string]error{
			"copy past the end":     b.CopyFromAsync(a, 65),
			"fill past the end":     tail.FillUint32Async(0, 9),
			"upload past host":      b.UploadAsync(h, 100, 40),
			"download past device":  b.DownloadAsync(h, 0, 65),
			"download negative off": b.DownloadAsync(h, -1, 4),
		} {
			if err == nil {
				t.Errorf("%s accepted", name)
			}
		}
	})

	t.Run("pinned-mmap-and-stager", func(t *testing.T) {
		// A read-only mapping of a file, as a checkpoint is mapped.
		const n = 3<<12 + 100
		src := make([]byte, n)
		for i := range src {
			src[i] = byte(i*7 + i>>8)
		}
		path := filepath.Join(t.TempDir(), "ckpt")
		if err := os.WriteFile(path, src, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		m, err := syscall.Mmap(int(f.Fd()), 0, n, syscall.PROT_READ, syscall.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		defer syscall.Munmap(m)
		pin, err := d.PinHost(m, true)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.PinHost(m[100:200], true); err == nil {
			t.Fatal("registering an already registered range accepted")
		}
		if pinnedAt(d, rtPtr(m[5000:]), 100) != pin {
			t.Fatal("a slice of the pinned mapping is not found as pinned")
		}
		s, err := d.NewStager(1000, 2) // chunks that do not divide the sizes below
		if err != nil {
			t.Fatal(err)
		}
		dst := rtAlloc(t, d, n+64)
		// Direct path: the source is inside the pinned mapping.
		if err := s.Upload(dst, 13, m[7:n-50]); err != nil {
			t.Fatal(err)
		}
		back := make([]byte, n+64)
		if err := dst.DownloadBytes(back); err != nil {
			t.Fatal(err)
		}
		if string(back[13:13+n-57]) != string(src[7:n-50]) {
			t.Fatal("direct upload from the pinned mapping differs")
		}
		if err := pin.Free(); err != nil {
			t.Fatal(err)
		}
		if pinnedAt(d, rtPtr(m), 1) != nil {
			t.Fatal("freed registration still listed")
		}
		// Ring path: ordinary memory, 11 chunks through 2 slots.
		plain := make([]byte, 10_500)
		r := rand.New(rand.NewPCG(3, 4))
		for i := range plain {
			plain[i] = byte(r.Uint32())
		}
		if err := s.Upload(dst, 64, plain); err != nil {
			t.Fatal(err)
		}
		if err := s.Wait(); err != nil {
			t.Fatal(err)
		}
		if err := dst.DownloadBytes(back); err != nil {
			t.Fatal(err)
		}
		if string(back[64:64+len(plain)]) != string(plain) {
			t.Fatal("staged upload differs")
		}
		u16 := []uint16{0x3c00, 0xc000, 0x7bff, 1}
		if err := s.UploadUint16(dst, 2, u16); err != nil {
			t.Fatal(err)
		}
		f32 := []float32{1.5, -2.25}
		if err := s.UploadFloat32(dst, 12, f32); err != nil {
			t.Fatal(err)
		}
		dst.DownloadBytes(back[:20])
		if got := rtUint16s(back[2:10]); got[0] != u16[0] || got[3] != u16[3] {
			t.Fatalf("UploadUint16 = %x", got)
		}
		if got := rtFloats(back[12:20]); !rtEqual32(got, f32) {
			t.Fatalf("UploadFloat32 = %v", got)
		}
		if err := s.Upload(dst, n, make([]byte, 65)); err == nil {
			t.Fatal("staged upload past the end accepted")
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("arena", func(t *testing.T) {
		a := d.NewArena(ArenaOptions{Name: "test arena", BlockSize: 1 << 20})
		defer a.Close()
		x, err := a.Alloc(1000)
		if err != nil {
			t.Fatal(err)
		}
		y, _ := a.Alloc(4000)
		if x.Ptr%ArenaAlign != 0 || y.Ptr%ArenaAlign != 0 || y.Ptr != x.Ptr+1024 {
			t.Fatalf("pieces at %#x and %#x", x.Ptr, y.Ptr)
		}
		rtUpload32(t, y, []float32{1, 2, 3})
		if got := rtDownload32(t, y, 3); !rtEqual32(got, []float32{1, 2, 3}) {
			t.Fatalf("arena piece round trip = %v", got)
		}
		// The piece is a view into a real driver allocation.
		ex, err := y.ExportIPC()
		if err != nil {
			t.Fatal(err)
		}
		ax, err := a.Export(y)
		if err != nil {
			t.Fatal(err)
		}
		if ex.AllocSize != 2<<20 || ex.Offset != 1024 || ex.Size != 4000 || ax.AllocSize != ex.AllocSize || ax.Offset != ex.Offset {
			t.Fatalf("ExportIPC %+v, Arena.Export %+v", ex, ax)
		}
		if err := y.Free(); err != nil { // a view: no-op
			t.Fatal(err)
		}
		if err := a.Free(y); err != nil {
			t.Fatal(err)
		}
		if err := a.Free(y); err == nil || !strings.Contains(err.Error(), "test arena") {
			t.Fatalf("double free: %v", err)
		}
		z, _ := a.Alloc(3000)
		if z.Ptr != y.Ptr {
			t.Fatalf("freed piece not reused: %#x, was %#x", z.Ptr, y.Ptr)
		}
		big, err := a.Alloc(3 << 20)
		if err != nil {
			t.Fatal(err)
		}
		st := a.Stats()
		if st.Blocks != 2 || st.Reserved != 6<<20 || st.Live != 3 || st.InUse != 1024+3072+3<<20 {
			t.Fatalf("stats %v", st)
		}
		a.Free(big)
		freed, err := a.Trim()
		if err != nil || freed != 4<<20 || a.Stats().Blocks != 1 {
			t.Fatalf("Trim = %d, %v; %v", freed, err, a.Stats())
		}
		a.Reset()
		if x2, _ := a.Alloc(1000); x2.Ptr != x.Ptr {
			t.Fatalf("after Reset the first piece is at %#x, was %#x", x2.Ptr, x.Ptr)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Alloc(8); err == nil {
			t.Fatal("Alloc after Close accepted")
		}
	})

	t.Run("arena-ipc-other-process", func(t *testing.T) {
		a := d.NewArena(ArenaOptions{Name: "shared", BlockSize: 1 << 20, Limit: 1 << 20})
		defer a.Close()
		a.Alloc(512)
		p, err := a.Alloc(16)
		if err != nil {
			t.Fatal(err)
		}
		rtUpload32(t, p, []float32{1, 2, 3, 4})
		x, err := a.Export(p)
		if err != nil {
			t.Fatal(err)
		}
		js, _ := json.Marshal(struct {
			H                       string
			AllocSize, Offset, Size int
		}{hex.EncodeToString(x.Handle.Reserved[:]), x.AllocSize, x.Offset, x.Size})
		cudatest.RunChild(t, "TestFakeIPCImportChild", []string{"SDBRIDGE_TEST_IPC_EXPORT=" + string(js)})
		if got := rtDownload32(t, p, 4); !rtEqual32(got, []float32{2, 4, 6, 8}) {
			t.Fatalf("after the other process doubled it: %v", got)
		}
		if _, err := a.Alloc(2 << 20); err == nil || !strings.Contains(err.Error(), "limit") {
			t.Fatalf("alloc past a one-block arena's limit: %v", err)
		}
	})

	t.Run("graph", func(t *testing.T) {
		m, err := d.CompileModule("graph_test.cu", `extern "C" __global__ void axpb_f32(float* y, const float* x, float a, float b, int n) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i < n) y[i] = a * x[i] + b;
}
`)
		if err != nil {
			t.Fatal(err)
		}
		axpb, err := m.Function("axpb_f32")
		if err != nil {
			t.Fatal(err)
		}
		const n = 40
		a := d.NewArena(ArenaOptions{Name: "graph scratch", BlockSize: 1 << 20})
		defer a.Close()
		x, _ := a.Alloc(4 * n)
		y, _ := a.Alloc(4 * n)
		z, _ := a.Alloc(4 * n)
		rtUpload32(t, z, make([]float32, n))
		xs := make([]float32, n)
		for i := range xs {
			xs[i] = float32(i)
		}
		rtUpload32(t, x, xs)
		var inCapture *Buffer
		g, err := d.Capture(func() error {
			if err := y.FillUint32Async(math.Float32bits(99), n); err != nil {
				return err
			}
			if err := axpb.Launch(Dim3{X: 2}, Dim3{X: 32}, 0, y, x, float32(2), float32(1), n); err != nil {
				return err
			}
			var err error
			if inCapture, err = a.Alloc(64); err != nil { // fits a held block
				return err
			}
			return z.CopyFromAsync(y, 4*n)
		})
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		if inCapture == nil {
			t.Fatal("no allocation during capture")
		}
		if got := rtDownload32(t, z, n); got[5] != 0 {
			t.Fatalf("capture ran the work: z[5] = %v", got[5])
		}
		for round, scale := range []float32{1, -3} {
			for i := range xs {
				xs[i] = scale * float32(i)
			}
			rtUpload32(t, x, xs)
			if err := g.Launch(); err != nil {
				t.Fatal(err)
			}
			got := rtDownload32(t, z, n)
			for i := range got {
				if want := 2*xs[i] + 1; got[i] != want {
					t.Fatalf("replay %d: z[%d] = %v, want %v", round, i, got[i], want)
				}
			}
		}
	})

	t.Run("capture-refuses", func(t *testing.T) {
		buf := rtAlloc(t, d, 64)
		ev, _ := d.NewEvent(false)
		defer ev.Close()
		small := d.NewArena(ArenaOptions{Name: "small arena", BlockSize: 1 << 20})
		defer small.Close()
		boom := errors.New("boom")
		tests := []struct {
			name string
			fn   func() error
			want string
			is   error
		}{
			{"sync upload", func() error { return buf.UploadFloat32([]float32{1}) }, "cannot be captured", nil},
			{"device synchronize", d.Synchronize, "cannot be captured", nil},
			{"event synchronize", ev.Synchronize, "Event.Synchronize", ErrCapturing},
			{"arena growth", func() error { _, err := small.Alloc(8); return err }, "small arena must grow", ErrCapturing},
			{"nested capture", func() error { _, err := d.Capture(func() error { return nil }); return err }, "nested Capture", ErrCapturing},
			{"closure error", func() error { return boom }, "captured function failed", boom},
			{"staged upload", func() error {
				s, err := d.NewStager(0, 1)
				if err != nil {
					return err
				}
				return s.Upload(buf, 0, []byte{1})
			}, "", ErrCapturing},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				g, err := d.Capture(tt.fn)
				if err == nil {
					g.Close()
					t.Fatal("capture succeeded")
				}
				if !strings.Contains(err.Error(), tt.want) || (tt.is != nil && !errors.Is(err, tt.is)) {
					t.Fatalf("error = %v, want %q / %v", err, tt.want, tt.is)
				}
				// The device is usable again.
				rtUpload32(t, buf, []float32{7})
				if err := d.Synchronize(); err != nil {
					t.Fatalf("after a failed capture: %v", err)
				}
			})
		}
		// A panicking closure ends the capture on its way out.
		func() {
			defer func() {
				if r := recover(); r != "captured panic" {
					t.Fatalf("recovered %v", r)
				}
			}()
			d.Capture(func() error { panic("captured panic") })
		}()
		if d.capturing() {
			t.Fatal("still capturing after a panic")
		}
		rtUpload32(t, buf, []float32{8})
		// Reserve before capturing lets the arena hand out memory inside.
		if err := small.Reserve(4096); err != nil {
			t.Fatal(err)
		}
		g, err := d.Capture(func() error { _, err := small.Alloc(4096); return err })
		if err != nil {
			t.Fatal(err)
		}
		g.Close()
	})

	t.Run("cublaslt", func(t *testing.T) {
		lt, err := d.NewLt()
		if err != nil {
			t.Fatal(err)
		}
		defer lt.Close()
		r := rand.New(rand.NewPCG(5, 6))
		for _, tc := range []struct {
			name    string
			ta, tb  bool
			m, n, k int
			ep      Epilogue
			typ     DataType
			beta    float32
		}{
			{"f32 plain", false, false, 3, 5, 7, EpilogueNone, R32F, 0},
			{"f32 linear bias", false, true, 6, 4, 5, EpilogueBias, R32F, 0},
			{"f32 relu bias transA beta", true, false, 4, 3, 6, EpilogueReLUBias, R32F, 0.5},
			{"f32 gelu bias", false, true, 5, 6, 9, EpilogueGELUBias, R32F, 0},
			{"f16 linear bias", false, true, 7, 8, 16, EpilogueBias, R16F, 0},
			{"f16 gelu bias transposed", true, true, 4, 6, 8, EpilogueGELUBias, R16F, 0},
		} {
			t.Run(tc.name, func(t *testing.T) {
				p := Matmul{TransA: tc.ta, TransB: tc.tb, M: tc.m, N: tc.n, K: tc.k, Epilogue: tc.ep, Type: tc.typ, Beta: tc.beta}
				ar, ac := tc.m, tc.k
				if tc.ta {
					ar, ac = tc.k, tc.m
				}
				br, bc := tc.k, tc.n
				if tc.tb {
					br, bc = tc.n, tc.k
				}
				p.LDA, p.LDB, p.LDC = ac, bc, tc.n
				// Quarter steps in [-2, 2]: exact in fp16.
				q := func(n int) []float32 {
					v := make([]float32, n)
					for i := range v {
						v[i] = float32(r.IntN(17)-8) / 4
					}
					return v
				}
				av, bv, cv := q(ar*ac), q(br*bc), q(tc.m*tc.n)
				var bias []float32
				if tc.ep.hasBias() {
					bias = q(tc.n)
				}
				want := rowMajorRef(p, av, bv, cv, bias)
				up := func(v []float32) *Buffer {
					b := rtAlloc(t, d, len(v)*tc.typ.Size())
					if tc.typ == R16F {
						if err := b.UploadUint16(rtHalfs(v)); err != nil {
							t.Fatal(err)
						}
					} else {
						rtUpload32(t, b, v)
					}
					return b
				}
				p.A, p.B, p.C = up(av), up(bv), up(cv)
				if bias != nil {
					p.Bias = up(bias)
				}
				if err := lt.Matmul(p); err != nil {
					t.Fatal(err)
				}
				var got []float32
				if tc.typ == R16F {
					h := make([]uint16, len(want))
					if err := p.C.DownloadUint16(h); err != nil {
						t.Fatal(err)
					}
					got = rtFromHalfs(h)
				} else {
					got = rtDownload32(t, p.C, len(want))
				}
				tol := 1e-5
				if tc.typ == R16F {
					tol = 2e-3 // output rounded to fp16
				}
				for i := range want {
					if d := math.Abs(float64(got[i] - want[i])); d > tol*(1+math.Abs(float64(want[i]))) {
						t.Fatalf("C[%d] = %g, want %g", i, got[i], want[i])
					}
				}
			})
		}
	})
}

// TestFakeIPCImportChild runs in a second process: it maps the piece
// exported by TestFakeRuntimeChild, checks it and doubles it in place.
func TestFakeIPCImportChild(t *testing.T) {
	js := os.Getenv("SDBRIDGE_TEST_IPC_EXPORT")
	if !cudatest.InChild() || js == "" {
		t.Skip("run by TestFakeRuntimeChild")
	}
	var in struct {
		H                       string
		AllocSize, Offset, Size int
	}
	if err := json.Unmarshal([]byte(js), &in); err != nil {
		t.Fatal(err)
	}
	x := IPCExport{AllocSize: in.AllocSize, Offset: in.Offset, Size: in.Size}
	h, err := hex.DecodeString(in.H)
	if err != nil || len(h) != 64 {
		t.Fatalf("handle %q: %v", in.H, err)
	}
	copy(x.Handle.Reserved[:], h)
	d := rtOpen(t)
	m, v, err := d.OpenIPCExport(x)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got := rtDownload32(t, v, 4)
	if !rtEqual32(got, []float32{1, 2, 3, 4}) {
		t.Fatalf("imported piece = %v", got)
	}
	for i := range got {
		got[i] *= 2
	}
	rtUpload32(t, v, got)
	if _, _, err := d.OpenIPCExport(IPCExport{Handle: x.Handle, AllocSize: 16, Offset: 8, Size: 16}); err == nil {
		t.Fatal("piece outside its allocation accepted")
	}
}

// rtFloats reinterprets little-endian bytes as float32s.
func rtFloats(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

// rtBytes is the little-endian encoding of v.
func rtBytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return b
}

func rtUint16s(b []byte) []uint16 {
	v := make([]uint16, len(b)/2)
	for i := range v {
		v[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return v
}

func rtEqual32(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func rtPtr(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }

// rtHalfs converts values exactly representable as normal fp16 numbers
// (or zero) to their bits.
func rtHalfs(v []float32) []uint16 {
	h := make([]uint16, len(v))
	for i, f := range v {
		b := math.Float32bits(f)
		sign, exp, man := uint16(b>>16)&0x8000, int(b>>23&0xff)-127+15, b&0x7fffff
		if f == 0 {
			h[i] = sign
			continue
		}
		h[i] = sign | uint16(exp)<<10 | uint16(man>>13)
	}
	return h
}

// rtFromHalfs decodes fp16 bits (zero, subnormal, normal, inf).
func rtFromHalfs(h []uint16) []float32 {
	v := make([]float32, len(h))
	for i, x := range h {
		sign := 1.0
		if x&0x8000 != 0 {
			sign = -1
		}
		e, m := int(x>>10&0x1f), float64(x&0x3ff)
		switch e {
		case 0:
			v[i] = float32(sign * m * math.Pow(2, -24))
		case 31:
			v[i] = float32(sign * math.Inf(1))
		default:
			v[i] = float32(sign * (1 + m/1024) * math.Pow(2, float64(e-15)))
		}
	}
	return v
}
