// guard.go turns a memory fault on a mapped file (it shrank underneath us)
// into an ordinary error instead of a crash.
package safetensors

import (
	"fmt"
	"runtime/debug"
)

// ErrFault is wrapped when reading mapped bytes faulted.
var ErrFault = fmt.Errorf("memory fault reading a mapped file (did it shrink or vanish after it was opened?)")

// guard runs fn with panic-on-fault enabled on this goroutine and converts a
// fault into ErrFault.
func guard(fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			if re, ok := r.(interface{ Addr() uintptr }); ok {
				err = fmt.Errorf("%w: address %#x", ErrFault, re.Addr())
				return
			}
			panic(r)
		}
	}()
	return fn()
}
