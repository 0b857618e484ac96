// lib.go: finding and opening the CUDA shared libraries at run time
// (purego's dlopen, so the build needs no CUDA and no cgo). A library is
// tried under each of its sonames, first through the dynamic loader's own
// search (LD_LIBRARY_PATH, ld.so.cache), then in the usual install folders
// of the CUDA toolkit and of NVIDIA's Python wheels. Symbols are bound one
// by one so that a missing symbol is an error naming it, never a panic.
// It does not download, install or version-check anything.
package cuda

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"github.com/ebitengine/purego"
)

// libDirs lists the folders searched after the dynamic loader's own path.
// SDBRIDGE_CUDA_LIB_DIR (a colon-separated list) comes first.
func libDirs() []string {
	var dirs []string
	if v := os.Getenv("SDBRIDGE_CUDA_LIB_DIR"); v != "" {
		dirs = append(dirs, filepath.SplitList(v)...)
	}
	for _, env := range []string{"CUDA_HOME", "CUDA_PATH"} {
		if v := os.Getenv(env); v != "" {
			dirs = append(dirs, filepath.Join(v, "lib64"), filepath.Join(v, "lib"))
		}
	}
	dirs = append(dirs,
		"/usr/local/cuda/lib64",
		"/usr/local/cuda/targets/x86_64-linux/lib",
		"/usr/local/nvidia/lib64",
		"/usr/lib/x86_64-linux-gnu",
		"/usr/lib64",
	)
	// NVIDIA's pip wheels (nvidia-cublas, nvidia-cuda-nvrtc, ...) put their
	// libraries under site-packages/nvidia/<pkg>/lib or nvidia/cu13/lib.
	for _, pat := range []string{
		"/opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib",
		"/usr/local/lib/python3*/dist-packages/nvidia/*/lib",
		"/usr/local/lib/python3*/site-packages/nvidia/*/lib",
		"/usr/lib/python3/dist-packages/nvidia/*/lib",
	} {
		m, _ := filepath.Glob(pat)
		dirs = append(dirs, m...)
	}
	return dirs
}

// openLib opens the first of names that loads, trying the loader's search
// path first and then each folder of libDirs. It returns the path or
// soname that loaded and its handle. before, if not nil, is called with
// the folder a library is about to be opened from (NVRTC uses it to
// preload its builtins library from the same folder).
func openLib(names []string, before func(dir string)) (string, uintptr, error) {
	var errs []string
	for _, n := range names {
		h, err := purego.Dlopen(n, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err == nil {
			return n, h, nil
		}
		errs = append(errs, err.Error())
	}
	for _, dir := range libDirs() {
		for _, n := range names {
			if strings.Contains(n, "/") {
				continue
			}
			p := filepath.Join(dir, n)
			if _, err := os.Stat(p); err != nil {
				continue
			}
			if before != nil {
				before(dir)
			}
			h, err := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_GLOBAL)
			if err == nil {
				return p, h, nil
			}
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 3 {
		errs = errs[:3]
	}
	return "", 0, errors.New(strings.Join(errs, "; "))
}

// sym names one C function and the Go function variable it binds to.
type sym struct {
	name     string
	fn       any  // pointer to a func variable
	optional bool // a missing optional symbol leaves fn nil
}

// bindAll resolves every symbol of syms in handle h and binds it.
func bindAll(lib string, h uintptr, syms []sym) error {
	for _, s := range syms {
		p, err := purego.Dlsym(h, s.name)
		if err != nil || p == 0 {
			if s.optional {
				continue
			}
			return fmt.Errorf("cuda: %s has no symbol %s (library too old or not the expected one)", lib, s.name)
		}
		purego.RegisterFunc(s.fn, p)
	}
	return nil
}

// goString copies the NUL-terminated C string at p (nil gives "").
func goString(p *byte) string {
	if p == nil {
		return ""
	}
	n := 0
	for *(*byte)(unsafe.Add(unsafe.Pointer(p), n)) != 0 && n < 1<<16 {
		n++
	}
	return string(unsafe.Slice(p, n))
}

// cString returns s as a NUL-terminated byte slice.
func cString(s string) []byte {
	b := make([]byte, len(s)+1)
	copy(b, s)
	return b
}

// cStringBytes trims a C char buffer at its first NUL.
func cStringBytes(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}
