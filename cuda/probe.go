// probe.go: a report of which CUDA libraries this machine has, for
// diagnostics (cudacheck, `sdbridge inspect`-style output). Probing opens
// each library but binds nothing; it does not fail when one is missing.
package cuda

import "fmt"

// LibraryStatus is one library's probe result.
type LibraryStatus struct {
	Name   string // what it is for
	Loaded string // soname or path that opened, or ""
	Err    error  // why none opened
}

func (s LibraryStatus) String() string {
	if s.Err != nil {
		return fmt.Sprintf("%-9s missing: %v", s.Name, s.Err)
	}
	return fmt.Sprintf("%-9s %s", s.Name, s.Loaded)
}

// cublasLtNames are cuBLASLt's sonames (probed here, bound in cublaslt.go).
var cublasLtNames = []string{"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so"}

// ProbeLibraries tries to open the driver, cuBLAS, cuBLASLt and NVRTC.
func ProbeLibraries() []LibraryStatus {
	var out []LibraryStatus
	for _, l := range []struct {
		name  string
		names []string
	}{
		{"driver", driverNames()},
		{"cublas", cublasNames},
		{"cublasLt", cublasLtNames},
		{"nvrtc", nvrtcNames},
	} {
		var before func(string)
		if l.name == "nvrtc" {
			before = preloadBuiltins
		}
		p, _, err := openLib(l.names, before)
		out = append(out, LibraryStatus{Name: l.name, Loaded: p, Err: err})
	}
	return out
}
