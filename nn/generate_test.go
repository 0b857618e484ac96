// generate_test.go: checks that the committed GEMM assembly is exactly what
// internal/gengemm writes, so a hand edit to a generated .s file (or a
// generator change without `go generate`) fails the tests. It runs the
// generator with `go run` into a temp dir; it does not check the
// hand-written .s files or run the kernels (kernels_test.go does that).
package nn

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestGeneratedAssemblyUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the generator; skipped under -short")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go tool not found: %v", err)
	}
	dir := t.TempDir()
	cmd := exec.Command(goTool, "run", "./internal/gengemm", "-o", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go run ./internal/gengemm: %v\n%s", err, out)
	}
	generated, err := filepath.Glob(filepath.Join(dir, "*.s"))
	if err != nil {
		t.Fatal(err)
	}
	if len(generated) == 0 {
		t.Fatal("generator wrote no .s files")
	}
	for _, path := range generated {
		name := filepath.Base(path)
		t.Run(name, func(t *testing.T) {
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(name)
			if err != nil {
				t.Fatalf("committed file: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the generator's output; run `go generate ./nn`", name)
			}
		})
	}
}
