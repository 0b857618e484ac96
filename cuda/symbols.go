// symbols.go: optional entry points. Newer driver and library functions
// (events, async copies, pinned memory, graphs, cuBLASLt's heuristics) are
// bound with optional: true, so an old driver or a stand-in that lacks one
// still loads; need then turns the missing symbol into an error naming it
// at the first call that wants it, instead of a nil-function panic. It
// does not look symbols up again after loading (a library is bound once).
package cuda

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
)

// ErrMissingSymbol is matched (errors.Is) by every MissingSymbolError.
var ErrMissingSymbol = errors.New("cuda: entry point missing from the loaded library")

// MissingSymbolError is a call that needs an entry point the loaded
// library does not export.
type MissingSymbolError struct {
	Lib    string // path or soname that loaded
	Symbol string // C name, e.g. "cuStreamBeginCapture_v2"
}

func (e *MissingSymbolError) Error() string {
	return fmt.Sprintf("cuda: %s has no %s (driver or library too old for this feature, or a stand-in without it)", e.Lib, e.Symbol)
}

// Is makes errors.Is(err, ErrMissingSymbol) true.
func (e *MissingSymbolError) Is(target error) bool { return target == ErrMissingSymbol }

// symTable is a bound library: its path and its symbol table.
type symTable interface {
	libPath() string
	syms() []sym
}

func (a *driverAPI) libPath() string { return a.path }

// bound caches, per bound table, which symbol names have a function.
var bound sync.Map // symTable -> map[string]bool

// present returns name -> bound for every symbol of t.
func present(t symTable) map[string]bool {
	if m, ok := bound.Load(t); ok {
		return m.(map[string]bool)
	}
	m := map[string]bool{}
	for _, s := range t.syms() {
		m[s.name] = !reflect.ValueOf(s.fn).Elem().IsNil()
	}
	bound.Store(t, m)
	return m
}

// need returns nil when every named symbol of t is bound, else a
// *MissingSymbolError for the first one missing. A name that is not in
// t's table at all is a programming error and says so.
func need(t symTable, names ...string) error {
	m := present(t)
	for _, n := range names {
		ok, known := m[n]
		if !known {
			return fmt.Errorf("cuda: internal error: %s is not in the symbol table of %s", n, t.libPath())
		}
		if !ok {
			return &MissingSymbolError{Lib: t.libPath(), Symbol: n}
		}
	}
	return nil
}
