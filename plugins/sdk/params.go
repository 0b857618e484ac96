// params.go: plugin parameters — the typed declarations a plugin publishes in
// Describe (ParamSpec) and the ordered name=value list a call carries
// (Params). It does not interpret any plugin's parameters.
package sdk

import (
	"fmt"
	"strconv"
)

// ParamType is the declared type of a parameter.
type ParamType string

// Parameter types.
const (
	ParamString ParamType = "string"
	ParamFloat  ParamType = "float"
	ParamInt    ParamType = "int"
	ParamBool   ParamType = "bool"
	ParamFile   ParamType = "file"
)

// ParamSpec declares one parameter a plugin accepts.
type ParamSpec struct {
	Name     string
	Type     ParamType
	Default  string
	Help     string
	Repeated bool // may be given several times, order kept
}

// Param is one name=value pair of a call.
type Param struct {
	Name, Value string
}

// Params is the ordered parameter list of a call; names may repeat.
type Params []Param

// Get returns the last value of name.
func (p Params) Get(name string) (string, bool) {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i].Name == name {
			return p[i].Value, true
		}
	}
	return "", false
}

// All returns every value of name, in order.
func (p Params) All(name string) []string {
	var out []string
	for _, x := range p {
		if x.Name == name {
			out = append(out, x.Value)
		}
	}
	return out
}

// Float returns name as a float, def when absent, or an error naming it.
func (p Params) Float(name string, def float64) (float64, error) {
	v, ok := p.Get(name)
	if !ok {
		return def, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, fmt.Errorf("parameter %q: %w", name, err)
	}
	return f, nil
}

// String returns name, or def when absent.
func (p Params) String(name, def string) string {
	if v, ok := p.Get(name); ok {
		return v
	}
	return def
}
