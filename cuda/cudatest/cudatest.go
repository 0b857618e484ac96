// Package cudatest builds stand-in CUDA libraries (driver, cuBLAS,
// cuBLASLt, NVRTC) from the C sources in fake/ for tests on machines
// without a GPU or the CUDA toolkit, and returns the environment that
// makes package cuda load them. The stand-ins run on host memory and
// execute the real CUDA C kernels: the stand-in NVRTC compiles a program
// with the host C++ compiler against the emulator header fake/sdbemu.h,
// and the stand-in driver runs its grids on fibers (see fake/README.md for
// what is emulated and how). It needs a C compiler (cc) and a C++ compiler
// (c++, g++ or clang++) and skips the test without them.
//
// Built libraries and compiled kernel modules are cached across test
// processes under $SDBRIDGE_CUDATEST_CACHE, or the user cache folder
// (sdbridge/cudatest), keyed by the content of every input, so a test run
// compiles each kernel source once. It does not emulate a GPU's timing,
// memory model or concurrency.
package cudatest

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"
)

//go:embed fake/*.c fake/*.h
var sources embed.FS

// cacheRoot is where built stand-ins and compiled kernel modules are kept:
// $SDBRIDGE_CUDATEST_CACHE, else the user cache folder, else (none, or not
// writable) a folder in the temp dir.
func cacheRoot() string {
	if v := os.Getenv("SDBRIDGE_CUDATEST_CACHE"); v != "" {
		return v
	}
	if d, err := os.UserCacheDir(); err == nil {
		root := filepath.Join(d, "sdbridge", "cudatest")
		if os.MkdirAll(root, 0o755) == nil {
			return root
		}
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("sdbridge-cudatest-%d", os.Getuid()))
}

// compilerID identifies a compiler binary for cache keys (path, size,
// modification time).
func compilerID(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return path
	}
	return fmt.Sprintf("%s:%d:%d", path, st.Size(), st.ModTime().UnixNano())
}

// findCXX returns the C++ compiler the stand-in NVRTC runs.
func findCXX() (string, error) {
	if v := os.Getenv("SDBRIDGE_CUDA_EMU_CXX"); v != "" {
		return exec.LookPath(v)
	}
	var err error
	for _, n := range []string{"c++", "g++", "clang++"} {
		var p string
		if p, err = exec.LookPath(n); err == nil {
			return p, nil
		}
	}
	return "", err
}

// Build compiles the stand-ins (or finds them in the cache) and returns the
// environment (KEY=VALUE) that points package cuda at them, with a fresh
// kernel cache (XDG_CACHE_HOME) in a temporary folder; run the code under
// test in a child process with it, since the driver loads once per
// process. It skips the test when no C or C++ compiler is found.
func Build(t testing.TB) []string {
	t.Helper()
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler (cc) to build the stand-in CUDA libraries")
	}
	cxx, err := findCXX()
	if err != nil {
		t.Skip("no C++ compiler (c++, g++ or clang++) for the CUDA C emulator of the stand-in NVRTC")
	}
	root := cacheRoot()
	libs, err := buildLibs(cc, root)
	if err != nil {
		t.Fatalf("cannot build the stand-in CUDA libraries: %v", err)
	}
	emu := filepath.Join(root, "emu")
	pruneOld(emu, 30*24*time.Hour)
	return []string{
		"SDBRIDGE_CUDA_DRIVER=" + filepath.Join(libs, "libcuda-fake.so"),
		"SDBRIDGE_CUDA_LIB_DIR=" + libs,
		"SDBRIDGE_CUDA_EMU_HEADER=" + filepath.Join(libs, "sdbemu.h"),
		"SDBRIDGE_CUDA_EMU_CXX=" + cxx,
		"SDBRIDGE_CUDA_EMU_CACHE=" + emu,
		"XDG_CACHE_HOME=" + filepath.Join(t.TempDir(), "cache"),
	}
}

// libs lists the stand-in libraries: source -> file name.
var libs = []struct{ src, out string }{
	{"fakecuda.c", "libcuda-fake.so"},
	{"fakecublas.c", "libcublas.so.13"},
	{"fakecublaslt.c", "libcublasLt.so.13"},
	{"fakenvrtc.c", "libnvrtc.so.13"},
}

// buildLibs returns a folder with the stand-in libraries and the emulator
// header, building it when the cache has none for these sources.
func buildLibs(cc, root string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "cudatest-v2\x00%s\x00", compilerID(cc))
	names, _ := fs.Glob(sources, "fake/*")
	sort.Strings(names)
	for _, n := range names {
		b, _ := sources.ReadFile(n)
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(b))
		h.Write(b)
	}
	dir := filepath.Join(root, "libs-"+hex.EncodeToString(h.Sum(nil))[:24])
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		now := time.Now()
		os.Chtimes(filepath.Join(dir, "done"), now, now) // in use: keep it from pruneLibs
		return dir, nil
	}
	pruneLibs(root, 30*24*time.Hour)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(root, ".build-*")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	for _, n := range names {
		b, _ := sources.ReadFile(n)
		if err := os.WriteFile(filepath.Join(tmp, filepath.Base(n)), b, 0o644); err != nil {
			return "", err
		}
	}
	for _, l := range libs {
		if _, err := fs.Stat(sources, "fake/"+l.src); err != nil {
			continue // not written yet
		}
		out, err := exec.Command(cc, "-shared", "-fPIC", "-O2", "-o", filepath.Join(tmp, l.out), filepath.Join(tmp, l.src), "-lm", "-ldl", "-lpthread").CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("%s: %v\n%s", l.src, err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, "done"), nil, 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another process built the same folder first: use it.
		if _, serr := os.Stat(filepath.Join(dir, "done")); serr != nil {
			return "", err
		}
	}
	return dir, nil
}

// pruneLibs removes library folders of other source versions not used
// within age (their "done" file is touched at each use).
func pruneLibs(root string, age time.Duration) {
	dirs, _ := filepath.Glob(filepath.Join(root, "libs-*"))
	for _, d := range dirs {
		if info, err := os.Stat(filepath.Join(d, "done")); err == nil && time.Since(info.ModTime()) > age {
			os.RemoveAll(d)
		}
	}
}

// pruneOld removes cache entries not modified within age.
func pruneOld(dir string, age time.Duration) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > age {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// RunChild re-runs the current test binary for the test named name with
// env added plus SDBRIDGE_CUDATEST_CHILD=1, and fails t with the child's
// output unless the child's test passed.
func RunChild(t testing.TB, name string, env []string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), env...), "SDBRIDGE_CUDATEST_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: "+name)) {
		t.Fatalf("child %s failed: %v\n%s", name, err, out)
	}
	return string(out)
}

// InChild reports whether this process is a RunChild child.
func InChild() bool { return os.Getenv("SDBRIDGE_CUDATEST_CHILD") != "" }
