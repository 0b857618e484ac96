// plugin_test.go: the plugin bridge end to end with real processes (the test
// binary re-executed as testplug): round trips, in-place patches through
// shared arenas, bit-exact swaps, crash and hang handling with restart,
// validation of returned refs, checksums, and the two benchmarks.
package host

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

func TestPluginRoundTrip(t *testing.T) {
	ctx := context.Background()
	_, p := newTestSupervisor(t, "")
	d, err := p.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := &sdk.DescribeResponse{Name: "testplug", Version: "1.2.3", APIMinor: sdk.APIMinor,
		Capabilities: []sdk.Capability{sdk.CapPatchWeights, sdk.CapConditioning, sdk.CapResiduals},
		Params:       []sdk.ParamSpec{{Name: "scale", Type: sdk.ParamFloat, Default: "1"}}}
	if diff := cmp.Diff(want, d); diff != "" {
		t.Fatalf("Describe (-want +got):\n%s", diff)
	}
	if p.Pid() <= 0 || p.Pid() == os.Getpid() {
		t.Fatalf("plugin pid %d: not a separate process", p.Pid())
	}

	pool := NewArenaPool("io", 1<<20, true)
	defer pool.Close()
	in := NewArenaPool("in", 1<<16, false)
	defer in.Close()
	x := in.AllocFloat32(4) // [1, 4]
	copy(x, []float32{1, 2, 3, 4})
	xRef, err := RefOf("x", x, []int{1, 4}, false)
	if err != nil {
		t.Fatal(err)
	}
	outs := map[string][]float32{"input_blocks.0": pool.AllocFloat32(4), "middle_block": pool.AllocFloat32(8)}
	var grants []*sdk.Tensor
	for _, name := range []string{"input_blocks.0", "middle_block"} {
		r, err := RefOf(name, outs[name], []int{len(outs[name])}, true)
		if err != nil {
			t.Fatal(err)
		}
		grants = append(grants, sdk.Ref(r))
	}
	resp, err := p.Residuals(ctx, &sdk.ResidualsRequest{X: sdk.Ref(xRef), Timesteps: []float32{0.5}, Outputs: grants})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Written) != 2 {
		t.Fatalf("written %v", resp.Written)
	}
	if diff := cmp.Diff([]float32{2.5, 4.5, 6.5, 8.5, 2.5, 4.5, 6.5, 8.5}, outs["middle_block"]); diff != "" {
		t.Fatalf("residual written in place (-want +got):\n%s", diff)
	}

	enc, err := p.EncodePrompt(ctx, &sdk.EncodePromptRequest{Text: "a cat"})
	if err != nil || enc.Handle != "h:a cat" || !slices.Equal(enc.ContextShape, []int{1, 2, 3}) {
		t.Fatalf("EncodePrompt = %+v, %v", enc, err)
	}
	cbuf := pool.AllocFloat32(6)
	cref, _ := RefOf("context", cbuf, []int{1, 2, 3}, true)
	if _, err := p.Conditioning(ctx, &sdk.ConditioningRequest{Handle: enc.Handle, Timesteps: []float32{999}, Out: sdk.Ref(cref)}); err != nil {
		t.Fatal(err)
	}
	if cbuf[5] != 999+7 {
		t.Fatalf("conditioning = %v", cbuf)
	}
	if err := p.ReleasePrompt(ctx, enc.Handle); err != nil {
		t.Fatal(err)
	}
}

// patchFixture is a tiny "checkpoint": fp16 originals (the mmap'd file) and
// float32 live weights in a plugin-writable arena.
type patchFixture struct {
	pool    *ArenaPool
	orig    map[string][]uint16
	targets []*PatchTarget
}

func newPatchFixture(t testing.TB, sizes map[string]int) *patchFixture {
	f := &patchFixture{pool: NewArenaPool("weights", 1<<20, true), orig: map[string][]uint16{}}
	t.Cleanup(func() { f.pool.Close() })
	rng := rand.New(rand.NewPCG(1, 2))
	names := make([]string, 0, len(sizes))
	for n := range sizes {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		bits := make([]uint16, sizes[n])
		for i := range bits {
			bits[i] = safetensors.F32ToF16(float32(rng.NormFloat64()))
		}
		f.orig[n] = bits
		data := f.pool.AllocFloat32(len(bits))
		safetensors.F16ToF32(data, bits)
		f.targets = append(f.targets, &PatchTarget{Name: n, Data: data, Shape: []int{len(bits)},
			Restore: func(dst []float32) error { safetensors.F16ToF32(dst, bits); return nil }})
	}
	return f
}

// withOriginals puts the fp16 originals of the named targets in a
// read-only arena and sets their Original (one-pass patching).
func (f *patchFixture) withOriginals(t testing.TB, names ...string) {
	size := 0
	for _, n := range names {
		size += 2*len(f.orig[n]) + arenaAlign
	}
	a, err := NewArena("originals", size, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	for _, n := range names {
		bits := f.orig[n]
		off, ok := a.alloc(2 * len(bits))
		if !ok {
			t.Fatal("originals arena full")
		}
		copy(a.Bytes()[off:], f16Bytes(bits))
		for _, pt := range f.targets {
			if pt.Name == n {
				pt.Original = &sdk.TensorRef{Name: n, Arena: a.ID, Offset: uint64(off), DType: sdk.F16, Shape: []int{len(bits)}}
			}
		}
	}
}

// patchModes runs fn with the host restoring every tensor first (two
// passes) and with originals for a and b passed to testplug (one pass;
// c, if any, keeps the restore path).
func patchModes(t *testing.T, fn func(t *testing.T, onePass bool, f func(*patchFixture), p func(kv ...string) sdk.Params)) {
	t.Run("two-pass", func(t *testing.T) {
		fn(t, false, func(*patchFixture) {}, params)
	})
	t.Run("one-pass", func(t *testing.T) {
		fn(t, true, func(f *patchFixture) { f.withOriginals(t, "a", "b") },
			func(kv ...string) sdk.Params { return params(append(kv, "onepass", "1")...) })
	})
}

// snapshot copies the live weights.
func (f *patchFixture) snapshot() map[string][]float32 {
	out := map[string][]float32{}
	for _, t := range f.targets {
		out[t.Name] = slices.Clone(t.Data)
	}
	return out
}

func (f *patchFixture) original() map[string][]float32 {
	out := map[string][]float32{}
	for n, bits := range f.orig {
		out[n] = make([]float32, len(bits))
		safetensors.F16ToF32(out[n], bits)
	}
	return out
}

func params(kv ...string) sdk.Params {
	var p sdk.Params
	for i := 0; i+1 < len(kv); i += 2 {
		p = append(p, sdk.Param{Name: kv[i], Value: kv[i+1]})
	}
	return p
}

func TestPatchSwapRestoreBitExact(t *testing.T) {
	patchModes(t, testPatchSwapRestoreBitExact)
}

func testPatchSwapRestoreBitExact(t *testing.T, onePass bool, setup func(*patchFixture), params func(kv ...string) sdk.Params) {
	ctx := context.Background()
	_, p := newTestSupervisor(t, "")
	f := newPatchFixture(t, map[string]int{"a": 1 << 20, "b": 1000, "c": 10})
	setup(f)
	w, err := NewWeightPatch(f.targets)
	if err != nil {
		t.Fatal(err)
	}
	orig := f.original()

	// Patch A: a and b scaled in place.
	rep, err := w.Apply(ctx, p, params("touch", "a", "touch", "b", "scale", "3"))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[bool]int{false: 0, true: 2}[onePass]; rep.OnePass != want || rep.Restored != 2-want {
		t.Fatalf("patch A: %d one-pass, %d restored first; want %d, %d", rep.OnePass, rep.Restored, want, 2-want)
	}
	got := f.snapshot()
	if got["a"][7] != orig["a"][7]*3 || got["b"][0] != orig["b"][0]*3 || !slices.Equal(got["c"], orig["c"]) {
		t.Fatalf("patch A not applied in place / touched c")
	}
	// No tensor bytes over gRPC: a 4 MiB tensor was patched.
	if st := p.WireStats(); st.SentBytes.Load()+st.RecvBytes.Load() > 16<<10 {
		t.Fatalf("%d bytes crossed gRPC while patching 4 MiB", st.SentBytes.Load()+st.RecvBytes.Load())
	}
	patchA := f.snapshot()

	// Many swaps A <-> B, then reset: bit-exact every time.
	for i := range 20 {
		rep, err := w.Apply(ctx, p, params("touch", "b", "touch", "c", "add", "0.1"))
		if err != nil {
			t.Fatal(err)
		}
		// a (patched before, not now) is always restored by the host.
		if want := map[bool]int{false: 3, true: 2}[onePass]; rep.Restored != want {
			t.Fatalf("swap %d: %d restored first, want %d", i, rep.Restored, want)
		}
		if got, want := f.snapshot()["b"][5], orig["b"][5]+0.1; got != want {
			t.Fatalf("swap %d: b = %v, want %v", i, got, want)
		}
		if !slices.Equal(f.snapshot()["a"], orig["a"]) {
			t.Fatalf("swap %d: a not restored bit-exactly", i)
		}
		if _, err := w.Apply(ctx, p, params("touch", "a", "touch", "b", "scale", "3")); err != nil {
			t.Fatal(err)
		}
		if !sameWeights(patchA, f.snapshot()) {
			t.Fatalf("swap %d: patch A not reproduced bit-exactly", i)
		}
	}
	if err := w.Reset(); err != nil {
		t.Fatal(err)
	}
	if !sameWeights(orig, f.snapshot()) {
		t.Fatalf("reset not bit-exact")
	}
}

func TestPluginCrashAndHang(t *testing.T) {
	patchModes(t, testPluginCrashAndHang)
}

func testPluginCrashAndHang(t *testing.T, _ bool, setup func(*patchFixture), params func(kv ...string) sdk.Params) {
	ctx := context.Background()
	tests := []struct {
		name, mode string
		callerWait time.Duration // caller's own deadline, 0 = none
		wantErr    error
		wantInErr  []string
	}{
		{"crash", "crash", 0, ErrCrashed, []string{`plugin "testplug" (pid `, "PatchWeights", "panic: testplug: crash requested", "testplug about to crash"}},
		{"hang", "hang", 0, context.DeadlineExceeded, []string{`plugin "testplug" (pid `, "no answer within"}},
		{"caller gives up", "hang", 300 * time.Millisecond, context.DeadlineExceeded, []string{`plugin "testplug" (pid `, "PatchWeights"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, p := newTestSupervisor(t, "")
			p.Timeout = 2 * time.Second
			f := newPatchFixture(t, map[string]int{"a": 4096, "b": 64})
			setup(f)
			w, err := NewWeightPatch(f.targets)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Apply(ctx, p, params("touch", "a", "scale", "2")); err != nil {
				t.Fatal(err)
			}
			before := f.snapshot()
			pid := p.Pid()
			cctx := ctx
			if tc.callerWait > 0 {
				p.Timeout = time.Minute
				var cancel context.CancelFunc
				cctx, cancel = context.WithTimeout(ctx, tc.callerWait)
				defer cancel()
			}
			_, err = w.Apply(cctx, p, params("touch", "a", "touch", "b", "scale", "5", "mode", tc.mode))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			var perr *PluginError
			if !errors.As(err, &perr) || perr.Pid != pid || !perr.Killed {
				t.Fatalf("err = %#v, want PluginError for pid %d", err, pid)
			}
			for _, s := range tc.wantInErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error lacks %q:\n%v", s, err)
				}
			}
			if !sameWeights(before, f.snapshot()) {
				t.Fatalf("weights changed by the failed call")
			}
			// The host keeps working: next use restarts the plugin.
			if _, err := w.Apply(ctx, p, params("touch", "b", "scale", "2")); err != nil {
				t.Fatalf("after %s: %v", tc.mode, err)
			}
			if p.Starts() != 2 || p.Pid() == pid {
				t.Fatalf("starts = %d, pid %d (old %d): want a restart", p.Starts(), p.Pid(), pid)
			}
		})
	}
}

func TestReturnedRefsValidated(t *testing.T) {
	ctx := context.Background()
	_, p := newTestSupervisor(t, "")
	f := newPatchFixture(t, map[string]int{"a": 256})
	w, err := NewWeightPatch(f.targets)
	if err != nil {
		t.Fatal(err)
	}
	orig := f.original()
	tests := []struct{ mode, want string }{
		{"badref-oob", "outside arena"},
		{"badref-dtype", "dtype F16, granted F32"},
		{"badref-shape", "shape [1], granted [256]"},
		{"badref-unknown", `"not.granted" was not given to the plugin`},
		{"badref-arena", "unknown arena"},
		{"error", "testplug refuses"},
	}
	for _, tc := range tests {
		t.Run(tc.mode, func(t *testing.T) {
			_, err := w.Apply(ctx, p, params("touch", "a", "scale", "9", "mode", tc.mode))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if !sameWeights(orig, f.snapshot()) {
				t.Fatalf("weights changed by a rejected call")
			}
		})
	}
	if p.Starts() != 1 {
		t.Fatalf("a plugin error restarted the plugin (%d starts)", p.Starts())
	}
}

func TestValidateWritten(t *testing.T) {
	a, err := NewArena("v", 4096, true)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ro, err := NewArena("v-ro", 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	g := sdk.TensorRef{Name: "w", Arena: a.ID, Offset: 64, DType: sdk.F32, Shape: []int{2, 8}, Writable: true}
	in := sdk.TensorRef{Name: "x", Arena: a.ID, Offset: 1024, DType: sdk.F32, Shape: []int{4}}
	mod := func(f func(*sdk.TensorRef)) sdk.TensorRef { r := g; r.Shape = slices.Clone(g.Shape); f(&r); return r }
	tests := []struct {
		name    string
		written []sdk.TensorRef
		want    string
	}{
		{"ok", []sdk.TensorRef{g}, ""},
		{"out of bounds", []sdk.TensorRef{mod(func(r *sdk.TensorRef) { r.Offset = 4096 - 32 })}, "outside arena"},
		{"huge shape", []sdk.TensorRef{mod(func(r *sdk.TensorRef) { r.Shape = []int{1 << 40, 1 << 40} })}, "invalid shape"},
		{"negative dim", []sdk.TensorRef{mod(func(r *sdk.TensorRef) { r.Shape = []int{-1, 8} })}, "invalid shape"},
		{"misaligned", []sdk.TensorRef{mod(func(r *sdk.TensorRef) { r.Offset = 66 })}, "not aligned"},
		{"wrong dtype", []sdk.TensorRef{mod(func(r *sdk.TensorRef) { r.DType = sdk.BF16 })}, "dtype BF16"},
		{"unknown dtype", []sdk.TensorRef{mod(func(r *sdk.TensorRef) { r.DType = "Q4" })}, "unknown dtype"},
		{"moved", []sdk.TensorRef{mod(func(r *sdk.TensorRef) { r.Offset = 128 })}, "granted arena"},
		{"no write access", []sdk.TensorRef{in}, "no write access"},
		{"read-only arena", []sdk.TensorRef{mod(func(r *sdk.TensorRef) { r.Arena = ro.ID })}, "read-only arena"},
		{"twice", []sdk.TensorRef{g, g}, "reported twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := validateWritten([]sdk.TensorRef{g, in}, tc.written)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestPluginChecksum(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	good := fileSHA256(t, exe)
	bad := strings.Repeat("0", 64)
	tests := []struct{ name, sha, want string }{
		{"matching", good, ""},
		{"mismatch", bad, "checksums did not match"},
		{"malformed", "xyz", "bad sha256"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, p := newTestSupervisor(t, tc.sha)
			_, err := p.Describe(context.Background())
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := (&Supervisor{plugins: map[string]*Plugin{}}).Register(Spec{Name: "x", Path: exe}); err == nil {
		t.Fatal("third-party plugin without checksum accepted")
	}
}

func TestSupervisorSocketDir(t *testing.T) {
	s, p := newTestSupervisor(t, "")
	if _, err := p.Describe(context.Background()); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(s.SocketDir())
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir %s: %v %v", s.SocketDir(), st.Mode(), err)
	}
	ents, _ := os.ReadDir(s.SocketDir())
	if len(ents) == 0 {
		t.Fatalf("plugin socket not in the private dir")
	}
	pid := p.Pid()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.SocketDir()); !os.IsNotExist(err) {
		t.Fatalf("socket dir left behind: %v", err)
	}
	if err := processAlive(pid); err == nil {
		t.Fatalf("plugin pid %d still running after Close", pid)
	}
}

func BenchmarkPluginRoundTrip(b *testing.B) {
	_, p := newTestSupervisor(b, "")
	ctx := context.Background()
	if _, err := p.Describe(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Describe(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPluginStart(b *testing.B) {
	_, p := newTestSupervisor(b, "")
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Start(); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		p.Stop()
		b.StartTimer()
	}
}

// sameWeights compares bit patterns (cmp.Diff is too slow for 1M floats).
func sameWeights(want, got map[string][]float32) bool {
	if len(want) != len(got) {
		return false
	}
	for n, w := range want {
		g := got[n]
		if len(g) != len(w) {
			return false
		}
		for i := range w {
			if math.Float32bits(w[i]) != math.Float32bits(g[i]) {
				return false
			}
		}
	}
	return true
}

// TestPdeathsig kills a host process with SIGKILL and checks its plugin
// dies with it (no orphans).
func TestPdeathsig(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "SDBRIDGE_TEST_HOST=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var word string
	var pid int
	if _, err := fmt.Fscan(out, &word, &pid); err != nil || word != "plugin" || pid <= 0 {
		cmd.Process.Kill()
		t.Fatalf("host helper said %q %d: %v", word, pid, err)
	}
	if err := processAlive(pid); err != nil {
		t.Fatalf("plugin %d not running: %v", pid, err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(pid) == nil {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("plugin %d outlived its killed host", pid)
		}
	}
}

// BenchmarkResidualsRoundTrip is one per-step hook call with the 13 named
// ControlNet-style outputs granted in an arena (descriptors only).
func BenchmarkResidualsRoundTrip(b *testing.B) {
	_, p := newTestSupervisor(b, "")
	ctx := context.Background()
	pool := NewArenaPool("bench-io", 1<<20, true)
	defer pool.Close()
	x := pool.AllocFloat32(4)
	xr, _ := RefOf("x", x, []int{1, 4}, false)
	req := &sdk.ResidualsRequest{X: sdk.Ref(xr), Timesteps: []float32{1}}
	for i := range 13 {
		name := fmt.Sprintf("input_blocks.%d", i)
		if i == 12 {
			name = "middle_block"
		}
		r, _ := RefOf(name, pool.AllocFloat32(4), []int{1, 4}, true)
		req.Outputs = append(req.Outputs, sdk.Ref(r))
	}
	if _, err := p.Residuals(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Residuals(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
