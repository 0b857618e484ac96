// nvrtc.go: NVRTC (the run-time CUDA C compiler) opened at run time, and
// the compile-and-cache path for the kernels embedded in the binary. A
// source is compiled for the device's own architecture (sm_XY, giving a
// CUBIN) when this NVRTC supports it, else for the newest virtual
// architecture it supports that the device can run (compute_XY, giving
// PTX the driver finishes). Results are cached on disk under
// $XDG_CACHE_HOME/sdbridge/cuda/<sha256>.{cubin,ptx}, keyed by source,
// options, NVRTC version and target. It does not pass include paths (the
// kernels include no headers) or use fast-math.
package cuda

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"unsafe"
)

// NVRTC is a bound libnvrtc.
type NVRTC struct {
	Path         string
	Major, Minor int
	Archs        []int // supported real architectures, e.g. 75, 80, 90

	nvrtcVersion              func(major, minor *int32) int32
	nvrtcCreateProgram        func(prog *uintptr, src, name string, nh int32, headers, includes unsafe.Pointer) int32
	nvrtcCompileProgram       func(prog uintptr, nopts int32, opts unsafe.Pointer) int32
	nvrtcDestroyProgram       func(prog *uintptr) int32
	nvrtcGetPTXSize           func(prog uintptr, n *uint64) int32
	nvrtcGetPTX               func(prog uintptr, buf *byte) int32
	nvrtcGetCUBINSize         func(prog uintptr, n *uint64) int32
	nvrtcGetCUBIN             func(prog uintptr, buf *byte) int32
	nvrtcGetProgramLogSize    func(prog uintptr, n *uint64) int32
	nvrtcGetProgramLog        func(prog uintptr, buf *byte) int32
	nvrtcGetErrorString       func(r int32) string
	nvrtcGetNumSupportedArchs func(n *int32) int32
	nvrtcGetSupportedArchs    func(a *int32) int32
}

// nvrtcNames are the sonames tried, newest first.
var nvrtcNames = []string{"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"}

var nvrtcLib struct {
	once sync.Once
	n    *NVRTC
	err  error
}

// LoadNVRTC opens NVRTC once per process.
func LoadNVRTC() (*NVRTC, error) {
	nvrtcLib.once.Do(func() { nvrtcLib.n, nvrtcLib.err = openNVRTC(nvrtcNames) })
	return nvrtcLib.n, nvrtcLib.err
}

// preloadBuiltins opens libnvrtc-builtins from dir first: NVRTC loads it
// by soname, which fails when dir is not on the loader's path.
func preloadBuiltins(dir string) {
	m, _ := filepath.Glob(filepath.Join(dir, "libnvrtc-builtins.so*"))
	slices.Sort(m)
	for i := len(m) - 1; i >= 0; i-- {
		if _, _, err := openLib([]string{m[i]}, nil); err == nil {
			return
		}
	}
}

func openNVRTC(names []string) (*NVRTC, error) {
	path, h, err := openLib(names, preloadBuiltins)
	if err != nil {
		return nil, fmt.Errorf("cuda: NVRTC (libnvrtc.so.13/.12) not found, so CUDA kernels cannot be compiled; install the CUDA toolkit or nvidia-cuda-nvrtc, set SDBRIDGE_CUDA_LIB_DIR, or use --device cpu (%v)", err)
	}
	n := &NVRTC{Path: path}
	err = bindAll(path, h, []sym{
		{name: "nvrtcVersion", fn: &n.nvrtcVersion},
		{name: "nvrtcCreateProgram", fn: &n.nvrtcCreateProgram},
		{name: "nvrtcCompileProgram", fn: &n.nvrtcCompileProgram},
		{name: "nvrtcDestroyProgram", fn: &n.nvrtcDestroyProgram},
		{name: "nvrtcGetPTXSize", fn: &n.nvrtcGetPTXSize},
		{name: "nvrtcGetPTX", fn: &n.nvrtcGetPTX},
		{name: "nvrtcGetCUBINSize", fn: &n.nvrtcGetCUBINSize, optional: true},
		{name: "nvrtcGetCUBIN", fn: &n.nvrtcGetCUBIN, optional: true},
		{name: "nvrtcGetProgramLogSize", fn: &n.nvrtcGetProgramLogSize},
		{name: "nvrtcGetProgramLog", fn: &n.nvrtcGetProgramLog},
		{name: "nvrtcGetErrorString", fn: &n.nvrtcGetErrorString},
		{name: "nvrtcGetNumSupportedArchs", fn: &n.nvrtcGetNumSupportedArchs, optional: true},
		{name: "nvrtcGetSupportedArchs", fn: &n.nvrtcGetSupportedArchs, optional: true},
	})
	if err != nil {
		return nil, err
	}
	var maj, mnr int32
	if r := n.nvrtcVersion(&maj, &mnr); r != 0 {
		return nil, fmt.Errorf("cuda: nvrtcVersion: %s", n.nvrtcGetErrorString(r))
	}
	n.Major, n.Minor = int(maj), int(mnr)
	if n.nvrtcGetNumSupportedArchs != nil && n.nvrtcGetSupportedArchs != nil {
		var c int32
		if n.nvrtcGetNumSupportedArchs(&c) == 0 && c > 0 {
			a := make([]int32, c)
			if n.nvrtcGetSupportedArchs(&a[0]) == 0 {
				for _, v := range a {
					n.Archs = append(n.Archs, int(v))
				}
			}
		}
	}
	return n, nil
}

// Target picks the compile target for a device of compute capability
// arch (e.g. 90): "sm_90" (CUBIN) if supported, else "compute_XY" (PTX)
// for the newest supported XY <= arch. An unknown list (old NVRTC) gives
// sm_<arch>.
func (n *NVRTC) Target(arch int) (string, error) {
	return pickTarget(n.Archs, arch)
}

func pickTarget(archs []int, arch int) (string, error) {
	if len(archs) == 0 || slices.Contains(archs, arch) {
		return fmt.Sprintf("sm_%d", arch), nil
	}
	best := -1
	for _, a := range archs {
		if a <= arch && a > best {
			best = a
		}
	}
	if best < 0 {
		return "", fmt.Errorf("cuda: this NVRTC supports architectures %v, none of which runs on compute capability %d.%d", archs, arch/10, arch%10)
	}
	return fmt.Sprintf("compute_%d", best), nil
}

// CompileError is a failed compilation with NVRTC's log.
type CompileError struct {
	Name, Target string
	Msg, Log     string
}

func (e *CompileError) Error() string {
	return fmt.Sprintf("cuda: NVRTC compiling %s for %s: %s\n%s", e.Name, e.Target, e.Msg, strings.TrimSpace(e.Log))
}

// Compile compiles CUDA C src for target ("sm_90" gives a CUBIN,
// "compute_90" a NUL-terminated PTX).
func (n *NVRTC) Compile(name, src, target string, extra ...string) ([]byte, error) {
	var prog uintptr
	if r := n.nvrtcCreateProgram(&prog, src, name, 0, nil, nil); r != 0 {
		return nil, &CompileError{Name: name, Target: target, Msg: "nvrtcCreateProgram: " + n.nvrtcGetErrorString(r)}
	}
	defer n.nvrtcDestroyProgram(&prog)
	opts := append([]string{"--gpu-architecture=" + target, "--std=c++17", "-default-device"}, extra...)
	cs := make([][]byte, len(opts))
	ptrs := make([]*byte, len(opts))
	for i, o := range opts {
		cs[i] = cString(o)
		ptrs[i] = &cs[i][0]
	}
	var pin runtime.Pinner
	for i := range cs {
		pin.Pin(&cs[i][0])
	}
	pin.Pin(&ptrs[0])
	r := n.nvrtcCompileProgram(prog, int32(len(opts)), unsafe.Pointer(&ptrs[0]))
	pin.Unpin()
	if r != 0 {
		return nil, &CompileError{Name: name, Target: target, Msg: n.nvrtcGetErrorString(r), Log: n.log(prog)}
	}
	var size uint64
	if strings.HasPrefix(target, "sm_") && n.nvrtcGetCUBIN != nil {
		if r := n.nvrtcGetCUBINSize(prog, &size); r != 0 || size == 0 {
			return nil, &CompileError{Name: name, Target: target, Msg: "nvrtcGetCUBINSize: " + n.nvrtcGetErrorString(r)}
		}
		buf := make([]byte, size)
		if r := n.nvrtcGetCUBIN(prog, &buf[0]); r != 0 {
			return nil, &CompileError{Name: name, Target: target, Msg: "nvrtcGetCUBIN: " + n.nvrtcGetErrorString(r)}
		}
		return buf, nil
	}
	if r := n.nvrtcGetPTXSize(prog, &size); r != 0 || size == 0 {
		return nil, &CompileError{Name: name, Target: target, Msg: "nvrtcGetPTXSize: " + n.nvrtcGetErrorString(r)}
	}
	buf := make([]byte, size) // includes the trailing NUL
	if r := n.nvrtcGetPTX(prog, &buf[0]); r != 0 {
		return nil, &CompileError{Name: name, Target: target, Msg: "nvrtcGetPTX: " + n.nvrtcGetErrorString(r)}
	}
	return buf, nil
}

func (n *NVRTC) log(prog uintptr) string {
	var size uint64
	if n.nvrtcGetProgramLogSize(prog, &size) != 0 || size <= 1 {
		return ""
	}
	buf := make([]byte, size)
	if n.nvrtcGetProgramLog(prog, &buf[0]) != 0 {
		return ""
	}
	return cStringBytes(buf)
}

// cacheDir is where compiled kernels are kept.
func cacheDir() (string, error) {
	base, err := os.UserCacheDir() // $XDG_CACHE_HOME or ~/.cache
	if err != nil {
		return "", err
	}
	return filepath.Join(base, "sdbridge", "cuda"), nil
}

// cacheKey names a compilation result.
func cacheKey(name, src, target string, nvrtcMajor, nvrtcMinor int) string {
	h := sha256.New()
	fmt.Fprintf(h, "sdbridge-cuda-v1\x00%s\x00%s\x00%d.%d\x00", name, target, nvrtcMajor, nvrtcMinor)
	h.Write([]byte(src))
	return hex.EncodeToString(h.Sum(nil))
}

// CompileModule compiles src (named name) for d with NVRTC, or reads the
// result from the disk cache, loads it and keeps it for the device's
// lifetime (a second call with the same source returns the same Module).
// A cache that cannot be read or written is skipped, not an error.
func (d *Device) CompileModule(name, src string) (*Module, error) {
	n, err := LoadNVRTC()
	if err != nil {
		return nil, err
	}
	target, err := n.Target(d.Major*10 + d.Minor)
	if err != nil {
		return nil, err
	}
	key := cacheKey(name, src, target, n.Major, n.Minor)
	d.modMu.Lock()
	defer d.modMu.Unlock()
	if m := d.mods[key]; m != nil {
		return m, nil
	}
	ext := ".ptx"
	if strings.HasPrefix(target, "sm_") {
		ext = ".cubin"
	}
	var file string
	if dir, err := cacheDir(); err == nil {
		file = filepath.Join(dir, key+ext)
	}
	var image []byte
	if file != "" {
		image, _ = os.ReadFile(file)
	}
	var m *Module
	if len(image) > 0 {
		m, err = d.LoadModule(image)
		if err != nil {
			image = nil // a stale or corrupt cache entry: recompile
		}
	}
	if m == nil {
		image, err = n.Compile(name, src, target)
		if err != nil {
			return nil, err
		}
		if m, err = d.LoadModule(image); err != nil {
			return nil, fmt.Errorf("cuda: loading %s compiled for %s: %w", name, target, err)
		}
		if file != "" {
			writeCache(file, image)
		}
	}
	d.mods[key] = m
	return m, nil
}

// writeCache stores image atomically (temp file + rename); errors are ignored.
func writeCache(file string, image []byte) {
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".tmp-*")
	if err != nil {
		return
	}
	_, werr := tmp.Write(image)
	cerr := tmp.Close()
	if werr != nil || cerr != nil {
		os.Remove(tmp.Name())
		return
	}
	if os.Rename(tmp.Name(), file) != nil {
		os.Remove(tmp.Name())
	}
}
