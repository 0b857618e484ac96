// Package golden loads the shared reference cases (../shared/golden, see its
// README) and compares outputs against them. It does not run any model: each
// case kind is run by a Runner that the test table wires to the real code.
package golden

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sdbridge/sdbridge/safetensors"
)

// Dir returns the golden directory: $SDBRIDGE_GOLDEN_DIR, else ../shared/golden
// relative to the module root (found from the working directory upwards).
func Dir() string {
	if d := os.Getenv("SDBRIDGE_GOLDEN_DIR"); d != "" {
		return d
	}
	wd, _ := os.Getwd()
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, "..", "shared", "golden")
		}
		if filepath.Dir(d) == d {
			return filepath.Join("..", "shared", "golden")
		}
	}
}

// Case is one reference case.
type Case struct {
	Name      string                     `json:"name"`
	Kind      string                     `json:"kind"`
	FilesRel  map[string]string          `json:"files"`
	Config    map[string]json.RawMessage `json:"config"`
	Tolerance float64                    `json:"tolerance_rel_l2"`
	Note      string                     `json:"note"`

	Root string // the golden directory
	Dir  string // this case's directory
	IO   *safetensors.File
}

// Load reads cases/<name>/case.json and maps its io.safetensors.
func Load(root, name string) (*Case, error) {
	dir := filepath.Join(root, "cases", name)
	b, err := os.ReadFile(filepath.Join(dir, "case.json"))
	if err != nil {
		return nil, fmt.Errorf("golden: %w", err)
	}
	c := &Case{Root: root, Dir: dir}
	if err := json.Unmarshal(b, c); err != nil {
		return nil, fmt.Errorf("golden: %s/case.json: %w", name, err)
	}
	if c.IO, err = safetensors.Open(filepath.Join(dir, "io.safetensors")); err != nil {
		return nil, fmt.Errorf("golden: %s: %w", name, err)
	}
	return c, nil
}

// Close releases the mapped io file.
func (c *Case) Close() error { return c.IO.Close() }

// File returns the absolute path of a file role ("checkpoint", "lora", ...).
func (c *Case) File(role string) (string, error) {
	rel, ok := c.FilesRel[role]
	if !ok {
		return "", fmt.Errorf("golden: case %s has no %q file", c.Name, role)
	}
	return filepath.Join(c.Root, rel), nil
}

// ConfigInto decodes config[key] into v (e.g. "unet", "pipeline").
func (c *Case) ConfigInto(key string, v any) error {
	raw, ok := c.Config[key]
	if !ok {
		return fmt.Errorf("golden: case %s has no config %q", c.Name, key)
	}
	return json.Unmarshal(raw, v)
}

// Input returns an input tensor ("in.x") widened to float32, with its shape.
func (c *Case) Input(name string) ([]float32, []int, error) {
	t, err := c.IO.Get(name)
	if err != nil {
		return nil, nil, err
	}
	d, err := t.Float32()
	return d, t.Shape, err
}

// InputInts returns an integer input tensor ("in.ids").
func (c *Case) InputInts(name string) ([]int64, []int, error) {
	t, err := c.IO.Get(name)
	if err != nil {
		return nil, nil, err
	}
	d, err := t.Int64()
	return d, t.Shape, err
}

// HasInput reports whether the case has a tensor of that name.
func (c *Case) HasInput(name string) bool {
	_, ok := c.IO.Lookup(name)
	return ok
}

// Outputs lists the expected output names (the "out." tensors).
func (c *Case) Outputs() []string {
	var out []string
	for _, n := range c.IO.Names() {
		if strings.HasPrefix(n, "out.") {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// Array is a produced output: float32 values and their shape.
type Array struct {
	Shape []int
	Data  []float32
}

// Result maps output names ("out.eps") to what the implementation produced.
type Result map[string]Array

// ErrUnsupported marks a kind the project cannot run yet (its issue is open).
var ErrUnsupported = errors.New("unsupported")

// Compare checks every expected output: present, same shape, finite, and
// ||got-want||/||want|| within tolerance. It returns the largest relative L2
// error over the outputs and an error describing the first failure.
func (c *Case) Compare(got Result) (float64, error) {
	worst := 0.0
	var firstErr error
	fail := func(err error) {
		if firstErr == nil {
			firstErr = err
		}
	}
	for _, name := range c.Outputs() {
		want, shape, err := c.Input(name)
		if err != nil {
			return math.Inf(1), err
		}
		g, ok := got[name]
		if !ok {
			fail(fmt.Errorf("%s: missing output", name))
			worst = math.Inf(1)
			continue
		}
		if !slices.Equal(g.Shape, shape) {
			fail(fmt.Errorf("%s: shape %v, want %v", name, g.Shape, shape))
			worst = math.Inf(1)
			continue
		}
		rel, err := RelL2(g.Data, want)
		if err != nil {
			fail(fmt.Errorf("%s: %w", name, err))
		}
		worst = max(worst, rel)
		if rel > c.Tolerance {
			fail(fmt.Errorf("%s: rel_l2 %.3g over tolerance %.3g", name, rel, c.Tolerance))
		}
	}
	return worst, firstErr
}

// RelL2 is ||got-want||_2 / ||want||_2 computed in float64; a NaN or Inf in
// got is an error.
func RelL2(got, want []float32) (float64, error) {
	if len(got) != len(want) {
		return math.Inf(1), fmt.Errorf("length %d, want %d", len(got), len(want))
	}
	var num, den float64
	for i := range got {
		g := float64(got[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			return math.Inf(1), fmt.Errorf("non-finite value %v at index %d", got[i], i)
		}
		d := g - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	if den == 0 {
		return math.Sqrt(num), nil
	}
	return math.Sqrt(num / den), nil
}
