// run_controlnet_test.go runs "controlnet" cases: the ControlNet file (any
// accepted form) on in.x, in.hint, in.timesteps and in.context, compared on
// the 13 named residuals out.residual.<name>. On a GPU the ControlNet runs
// as models.ControlNetCUDA.
package golden

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// loadCaseControlNet opens the case's ControlNet file and binds it with the
// case's head count.
func loadCaseControlNet(c *Case) (*models.ControlNet, error) {
	var uc unetCaseConfig
	if err := c.ConfigInto("unet", &uc); err != nil {
		return nil, err
	}
	path, err := c.File("controlnet")
	if err != nil {
		return nil, err
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() // weights are widened into their own memory at bind time
	w, _, err := models.ControlNetWeights(f)
	if err != nil {
		return nil, err
	}
	cfg, err := models.InferControlNetConfig(w)
	if err != nil {
		return nil, err
	}
	cfg.NumHeads = uc.NumHeads
	return models.NewControlNet(w, cfg)
}

// residualModel is the ControlNet a case runs: *models.ControlNet or its
// CUDA twin.
type residualModel interface {
	Forward(x, hint *nn.Tensor, timesteps []float32, ctx *nn.Tensor) (models.Residuals, error)
}

// deviceControlNet returns cn on d (cn itself on the CPU) and its closer.
func deviceControlNet(cn *models.ControlNet, d *host.Device) (residualModel, func() error, error) {
	if !d.OnGPU() {
		return cn, func() error { return nil }, nil
	}
	g, err := models.NewControlNetCUDA(d.GPU, cn)
	if err != nil {
		return nil, nil, err
	}
	return g, g.Close, nil
}

// controlNetCaseResiduals runs the case ControlNet on the case inputs.
func controlNetCaseResiduals(c *Case, cn residualModel) (models.Residuals, error) {
	x, ts, ctx, err := caseUNetInputs(c)
	if err != nil {
		return nil, err
	}
	hint, err := caseTensor(c, "in.hint")
	if err != nil {
		return nil, err
	}
	return cn.Forward(x, hint, ts, ctx)
}

// runControlNet runs a "controlnet" case on the CPU.
func runControlNet(c *Case) (Result, error) { return controlNetCase(c, nil) }

// runControlNetGPU runs a "controlnet" case on d's GPU.
func runControlNetGPU(c *Case, d *host.Device) (Result, []string, error) {
	res, err := controlNetCase(c, d)
	return res, nil, err
}

// controlNetCase runs a "controlnet" case on d (nil: the CPU).
func controlNetCase(c *Case, d *host.Device) (_ Result, err error) {
	cpu, err := loadCaseControlNet(c)
	if err != nil {
		return nil, err
	}
	cn, closeCN, err := deviceControlNet(cpu, d)
	if err != nil {
		return nil, err
	}
	defer closeGPU(closeCN, &err)
	res, err := controlNetCaseResiduals(c, cn)
	if err != nil {
		return nil, err
	}
	out := Result{}
	for name, t := range res {
		out["out.residual."+name] = Array{Shape: t.Shape, Data: t.Data}
	}
	return out, nil
}

// controlNetDiffusersView presents an ldm ControlNet file (keys under prefix) under
// the diffusers ControlNetModel names of models.ControlNetDiffusersTable, so
// the diffusers loading path is checked against the reference outputs.
type controlNetDiffusersView struct {
	f        *safetensors.File
	toStored map[string]string
	names    []string
}

func newControlNetDiffusersView(f *safetensors.File, prefix string) (*controlNetDiffusersView, error) {
	toDiff := map[string]string{}
	for _, p := range models.ControlNetDiffusersTable(4, 2, 6) {
		toDiff[p.LDM] = p.Diffusers
	}
	v := &controlNetDiffusersView{f: f, toStored: map[string]string{}}
	for _, n := range f.Names() {
		k, ok := strings.CutPrefix(n, prefix)
		if !ok {
			continue
		}
		d := ""
		for i := len(k); i > 0 && d == ""; i = strings.LastIndexByte(k[:i], '.') {
			if to, ok := toDiff[k[:i]]; ok {
				d = to + k[i:]
			}
		}
		if d == "" {
			return nil, fmt.Errorf("no diffusers name for %q", n)
		}
		v.toStored[d] = n
		v.names = append(v.names, d)
	}
	return v, nil
}

func (v *controlNetDiffusersView) Get(name string) (safetensors.Tensor, error) {
	return v.f.Get(v.toStored[name])
}

func (v *controlNetDiffusersView) Lookup(name string) (*safetensors.Info, bool) {
	s, ok := v.toStored[name]
	if !ok {
		return nil, false
	}
	return v.f.Lookup(s)
}

func (v *controlNetDiffusersView) Names() []string { return v.names }

// TestControlNetDiffusersLayout runs the controlnet_forward reference case
// with its ControlNet renamed to the diffusers layout.
func TestControlNetDiffusersLayout(t *testing.T) {
	c, err := Load(Dir(), "controlnet_forward")
	if err != nil {
		t.Skipf("golden case not available: %v", err)
	}
	defer c.Close()
	var uc unetCaseConfig
	if err := c.ConfigInto("unet", &uc); err != nil {
		t.Fatal(err)
	}
	path, err := c.File("controlnet")
	if err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	view, err := newControlNetDiffusersView(f, "control_model.")
	if err != nil {
		t.Fatal(err)
	}
	w, layout, err := models.ControlNetWeights(view)
	if err != nil {
		t.Fatal(err)
	}
	if layout != models.ControlNetDiffusers {
		t.Errorf("layout %q, want %q", layout, models.ControlNetDiffusers)
	}
	cfg, err := models.InferControlNetConfig(w)
	if err != nil {
		t.Fatal(err)
	}
	cfg.NumHeads = uc.NumHeads
	cn, err := models.NewControlNet(w, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(cn.Unused) != 0 {
		t.Errorf("unused keys: %v", cn.Unused)
	}
	res, err := controlNetCaseResiduals(c, cn)
	if err != nil {
		t.Fatal(err)
	}
	got := Result{}
	for name, r := range res {
		got["out.residual."+name] = Array{Shape: r.Shape, Data: r.Data}
	}
	rel, err := c.Compare(got)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("diffusers layout: rel_l2 %.3g", rel)
}
