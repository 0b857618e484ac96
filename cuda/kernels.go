// kernels.go: the CUDA C kernels embedded in the binary (kernels/*.cu),
// each served with the common device code of kernels/prelude.cuh in
// front (half_t, to_f/from_f, reductions, mma_m16n8k16), and per-device
// lookup of a kernel by file and name, compiling the file with NVRTC on
// first use (see CompileModule for the disk cache, whose key covers the
// whole served source, prelude included). It does not hold any kernel
// logic itself.
package cuda

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strings"
)

//go:embed kernels/*.cu kernels/prelude.cuh
var kernelFS embed.FS

// preludeFile is prepended to every kernel file by KernelSource.
const preludeFile = "prelude.cuh"

// KernelFiles lists the embedded kernel sources ("norm.cu", ...).
func KernelFiles() []string {
	ents, _ := fs.ReadDir(kernelFS, "kernels")
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".cu") {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// KernelPrelude returns the common device code (kernels/prelude.cuh)
// that KernelSource puts in front of every kernel file.
func KernelPrelude() string {
	b, err := kernelFS.ReadFile("kernels/" + preludeFile)
	if err != nil {
		panic("cuda: prelude.cuh is not embedded: " + err.Error())
	}
	return string(b)
}

// KernelSource returns the CUDA C source of an embedded kernel file as
// compiled: the prelude, then the file, with #line directives so compile
// errors name the right file and line.
func KernelSource(file string) (string, error) {
	if !strings.HasSuffix(file, ".cu") {
		return "", fmt.Errorf("cuda: kernel file %q is not a .cu file (have %s)", file, strings.Join(KernelFiles(), ", "))
	}
	b, err := kernelFS.ReadFile("kernels/" + file)
	if err != nil {
		return "", fmt.Errorf("cuda: no embedded kernel file %q (have %s)", file, strings.Join(KernelFiles(), ", "))
	}
	return fmt.Sprintf("#line 1 %q\n%s\n#line 1 %q\n%s", preludeFile, KernelPrelude(), file, b), nil
}

// Kernel returns kernel name from embedded file on d, compiling and
// loading the file on first use.
func (d *Device) Kernel(file, name string) (*Function, error) {
	key := file + ":" + name
	d.modMu.Lock()
	if d.fns == nil {
		d.fns = map[string]*Function{}
	}
	f := d.fns[key]
	d.modMu.Unlock()
	if f != nil {
		return f, nil
	}
	src, err := KernelSource(file)
	if err != nil {
		return nil, err
	}
	m, err := d.CompileModule(file, src)
	if err != nil {
		return nil, err
	}
	f, err = m.Function(name)
	if err != nil {
		return nil, err
	}
	d.modMu.Lock()
	d.fns[key] = f
	d.modMu.Unlock()
	return f, nil
}
