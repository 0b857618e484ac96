// check.go: shape checks for the kernels' preconditions. A mismatch is a
// programming error in a model (weights are checked when bound), so it
// panics with a message naming the op and both shapes instead of reading
// the wrong elements or failing later with a bare index error. It does
// not validate tensor contents.
package nn

import (
	"fmt"
	"slices"
)

// mustSameShape panics unless a and b have equal shapes.
func mustSameShape(op string, a, b *Tensor) {
	if !slices.Equal(a.Shape, b.Shape) || len(a.Data) != len(b.Data) {
		panic(fmt.Sprintf("nn.%s: shapes %v and %v differ", op, a.Shape, b.Shape))
	}
}

// mustf panics with a formatted message naming op unless ok.
func mustf(ok bool, op, format string, args ...any) {
	if !ok {
		panic(fmt.Sprintf("nn."+op+": "+format, args...))
	}
}
