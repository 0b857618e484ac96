// kernels.go: the CUDA C kernels embedded in the binary (kernels/*.cu),
// and per-device lookup of a kernel by file and name, compiling the file
// with NVRTC on first use (see CompileModule for the disk cache). It does
// not hold any kernel logic itself.
package cuda

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strings"
)

//go:embed kernels/*.cu
var kernelFS embed.FS

// KernelFiles lists the embedded kernel sources ("norm.cu", ...).
func KernelFiles() []string {
	ents, _ := fs.ReadDir(kernelFS, "kernels")
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// KernelSource returns the CUDA C source of an embedded kernel file.
func KernelSource(file string) (string, error) {
	b, err := kernelFS.ReadFile("kernels/" + file)
	if err != nil {
		return "", fmt.Errorf("cuda: no embedded kernel file %q (have %s)", file, strings.Join(KernelFiles(), ", "))
	}
	return string(b), nil
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
