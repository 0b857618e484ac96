// Package cudatest builds stand-in CUDA libraries (driver, cuBLAS, NVRTC)
// from the C sources in fake/ for tests on machines without a GPU or the
// CUDA toolkit, and returns the environment that makes package cuda load
// them. The stand-ins run on host memory and run host twins of the
// embedded kernels, so the Go side (bindings, launch arguments, nn's GPU
// ops, cudacheck) can be tested end to end; the CUDA C itself is checked
// only on a real GPU. It needs a C compiler (cc) and skips without one.
package cudatest

import (
	"bytes"
	"embed"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

//go:embed fake/*.c fake/*.h
var sources embed.FS

// Build compiles the stand-ins into a temporary folder and returns the
// environment (KEY=VALUE) that points package cuda at them; run the code
// under test in a child process with it, since the driver loads once per
// process. It skips the test when no C compiler is found.
func Build(t testing.TB) []string {
	t.Helper()
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler (cc) to build the stand-in CUDA libraries")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, _ := sources.ReadDir("fake")
	for _, e := range ents {
		b, _ := sources.ReadFile("fake/" + e.Name())
		if err := os.WriteFile(filepath.Join(src, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range []struct{ src, out string }{
		{"fakecuda.c", "libcuda-fake.so"},
		{"fakecublas.c", "libcublas.so.13"},
		{"fakenvrtc.c", "libnvrtc.so.13"},
	} {
		out, err := exec.Command(cc, "-shared", "-fPIC", "-O2", "-o", filepath.Join(dir, b.out), filepath.Join(src, b.src), "-lm").CombinedOutput()
		if err != nil {
			t.Skipf("cannot build the stand-in %s: %v\n%s", b.out, err, out)
		}
	}
	return []string{
		"SDBRIDGE_CUDA_DRIVER=" + filepath.Join(dir, "libcuda-fake.so"),
		"SDBRIDGE_CUDA_LIB_DIR=" + dir,
		"XDG_CACHE_HOME=" + filepath.Join(dir, "cache"),
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
