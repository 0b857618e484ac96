// refs.go: validation of the TensorRefs a plugin sends back. Whatever a
// plugin reports as written must be exactly a ref the host granted writable
// for that call, inside a live arena, with a known dtype and a shape whose
// size fits. It does not look at tensor values.
package host

import (
	"fmt"
	"slices"

	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// checkRef checks a ref against the live arena it names.
func checkRef(r sdk.TensorRef) error {
	a, ok := lookupArena(r.Arena)
	if !ok {
		return fmt.Errorf("tensor %q: unknown arena %d", r.Name, r.Arena)
	}
	if r.Writable && !a.PluginWritable {
		return fmt.Errorf("tensor %q: write access to read-only arena %d", r.Name, r.Arena)
	}
	return r.CheckBounds(uint64(a.Size()))
}

// validateWritten checks every written ref against the call's grants. A
// read-only input may share its name with a writable grant (a tensor's
// original, plugin_patch.go); the writable grant is the one checked.
func validateWritten(grants []sdk.TensorRef, written []sdk.TensorRef) error {
	byName := make(map[string]sdk.TensorRef, len(grants))
	for _, g := range grants {
		if old, ok := byName[g.Name]; ok && old.Writable && !g.Writable {
			continue
		}
		byName[g.Name] = g
	}
	seen := make(map[string]bool, len(written))
	for _, w := range written {
		if err := checkRef(w); err != nil {
			return fmt.Errorf("invalid ref returned: %w", err)
		}
		g, ok := byName[w.Name]
		switch {
		case !ok:
			return fmt.Errorf("invalid ref returned: tensor %q was not given to the plugin", w.Name)
		case !g.Writable:
			return fmt.Errorf("invalid ref returned: tensor %q: no write access", w.Name)
		case seen[w.Name]:
			return fmt.Errorf("invalid ref returned: tensor %q reported twice", w.Name)
		case w.DType != g.DType:
			return fmt.Errorf("invalid ref returned: tensor %q: dtype %s, granted %s", w.Name, w.DType, g.DType)
		case !slices.Equal(w.Shape, g.Shape):
			return fmt.Errorf("invalid ref returned: tensor %q: shape %v, granted %v", w.Name, w.Shape, g.Shape)
		case w.Arena != g.Arena || w.Offset != g.Offset:
			return fmt.Errorf("invalid ref returned: tensor %q: at arena %d offset %d, granted arena %d offset %d", w.Name, w.Arena, w.Offset, g.Arena, g.Offset)
		}
		seen[w.Name] = true
	}
	return nil
}
