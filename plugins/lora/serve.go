// serve.go: the LoRA plugin process. It implements sdk.WeightPatcher on top
// of the merge maths of this package: PlanPatch resolves and validates every
// adapter against the model's tensor list (atomic: any problem refuses the
// whole request), PatchWeights merges each granted float32 tensor in place
// in the host's arena, from the original values the host restored there or,
// in one pass, from the original stored bytes the host passes as a
// read-only input of the same name (ReadsOriginals; read under
// debug.SetPanicOnFault, since that input may be a mapped checkpoint file).
// Tensors in device arenas (weights on the GPU) are merged there: the
// plain LoRA ones of a call in one kernel launch (PatchDeviceBatch,
// device_batch.go; W = W_orig + delta when the original comes as a device
// input), the others one by one (device.go).
//
// Parameters, in order (each "lora" starts an adapter; the strength
// parameters after it apply to it):
//
//	lora=PATH  unet=0.8  te=0.5  blocks=1,0,0,...(17 or 26 values)
//
// te defaults to the adapter's unet strength, unet to 1.
//
// It does not restore, cast or track patch state: the host restores
// originals from the checkpoint and decides what to patch (host/plugin_patch.go).
package lora

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

// PluginVersion is reported by Describe.
const PluginVersion = "0.1.0"

// maxCachedFiles bounds the adapter files kept open between calls.
const maxCachedFiles = 16

// Plugin is the LoRA weight patcher.
type Plugin struct {
	mu      sync.Mutex
	files   map[string]*cachedFile
	plans   map[string]*Plan // by parameter string, from the last PlanPatch calls
	order   []string
	blas    map[*cuda.Device]*cuda.BLAS // device.go
	factors *DeviceFactors              // LoRA factors kept on devices (device.go)
}

type cachedFile struct {
	f     *File
	size  int64
	mtime time.Time
}

// NewPlugin returns a LoRA plugin with empty caches.
func NewPlugin() *Plugin {
	return &Plugin{files: map[string]*cachedFile{}, plans: map[string]*Plan{}, factors: NewDeviceFactors()}
}

// Serve runs the LoRA plugin (main of `sdbridge plugin lora`).
func Serve() {
	sdk.Serve(NewPlugin(), sdk.WithLogger(sdk.NewLogger("lora")))
}

// Describe names the plugin and its parameters.
func (p *Plugin) Describe(context.Context, *sdk.DescribeRequest) (*sdk.DescribeResponse, error) {
	return &sdk.DescribeResponse{
		Name:         "lora",
		Version:      PluginVersion,
		Capabilities: []sdk.Capability{sdk.CapDeviceArenas},
		Params: []sdk.ParamSpec{
			{Name: "lora", Type: sdk.ParamFile, Repeated: true, Help: "adapter file (.safetensors); starts a new adapter"},
			{Name: "unet", Type: sdk.ParamFloat, Default: "1", Help: "U-Net strength of the last adapter"},
			{Name: "te", Type: sdk.ParamFloat, Default: "unet", Help: "text-encoder strength of the last adapter"},
			{Name: "blocks", Type: sdk.ParamString, Help: "lora-block-weight vector (17 or 26 comma-separated values)"},
		},
	}, nil
}

type adapterParams struct {
	path     string
	unet, te float64
	teSet    bool
	blocks   []float64
}

// parseParams reads the ordered adapter list.
func parseParams(ps sdk.Params) ([]adapterParams, error) {
	var out []adapterParams
	for _, prm := range ps {
		if prm.Name == "lora" {
			out = append(out, adapterParams{path: prm.Value, unet: 1})
			continue
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("lora: parameter %q before any \"lora\"", prm.Name)
		}
		a := &out[len(out)-1]
		switch prm.Name {
		case "unet", "te":
			v, err := strconv.ParseFloat(prm.Value, 64)
			if err != nil {
				return nil, fmt.Errorf("lora: %s: parameter %q: %w", a.path, prm.Name, err)
			}
			if prm.Name == "unet" {
				a.unet = v
			} else {
				a.te, a.teSet = v, true
			}
		case "blocks":
			for _, s := range strings.Split(prm.Value, ",") {
				v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
				if err != nil {
					return nil, fmt.Errorf("lora: %s: block weights %q: %w", a.path, prm.Value, err)
				}
				a.blocks = append(a.blocks, v)
			}
		default:
			return nil, fmt.Errorf("lora: unknown parameter %q", prm.Name)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("lora: no adapter given (parameter \"lora\")")
	}
	for i := range out {
		if !out[i].teSet {
			out[i].te = out[i].unet
		}
	}
	return out, nil
}

func paramsKey(ps sdk.Params) string {
	var b strings.Builder
	for _, prm := range ps {
		fmt.Fprintf(&b, "%q=%q;", prm.Name, prm.Value)
	}
	return b.String()
}

// file returns the loaded adapter at path, reloading it if it changed.
func (p *Plugin) file(path string) (*File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("lora: %w", err)
	}
	if c, ok := p.files[path]; ok && c.size == st.Size() && c.mtime.Equal(st.ModTime()) {
		return c.f, nil
	}
	f, err := Load(path)
	if err != nil {
		return nil, err
	}
	if old, ok := p.files[path]; ok {
		p.factors.DropFile(old.f)
		old.f.Close()
	}
	if len(p.files) >= maxCachedFiles {
		for k, c := range p.files { // evict any one; plans holding it are dropped
			p.factors.DropFile(c.f)
			c.f.Close()
			delete(p.files, k)
			p.plans, p.order = map[string]*Plan{}, nil
			break
		}
	}
	p.files[path] = &cachedFile{f: f, size: st.Size(), mtime: st.ModTime()}
	return f, nil
}

// modelKeys presents the host's tensor list as Keys.
type modelKeys struct {
	names []string
	infos map[string]*safetensors.Info
}

func newModelKeys(model []sdk.TensorInfo) (*modelKeys, error) {
	k := &modelKeys{infos: make(map[string]*safetensors.Info, len(model))}
	for _, t := range model {
		dt, err := safetensors.ParseDType(string(t.DType))
		if err != nil {
			return nil, fmt.Errorf("lora: model tensor %q: %w", t.Name, err)
		}
		k.names = append(k.names, t.Name)
		k.infos[t.Name] = &safetensors.Info{Name: t.Name, DType: dt, Shape: t.Shape}
	}
	return k, nil
}

func (k *modelKeys) Names() []string { return k.names }

func (k *modelKeys) Lookup(name string) (*safetensors.Info, bool) {
	i, ok := k.infos[name]
	return i, ok
}

// PlanPatch validates the adapters against the model and lists the tensors
// the merge writes.
func (p *Plugin) PlanPatch(_ context.Context, req *sdk.PlanPatchRequest) (*sdk.PlanPatchResponse, error) {
	specs, err := parseParams(req.Params)
	if err != nil {
		return nil, err
	}
	keys, err := newModelKeys(req.Model)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	adapters := make([]Adapter, len(specs))
	for i, s := range specs {
		f, err := p.file(s.path)
		if err != nil {
			return nil, err
		}
		adapters[i] = Adapter{File: f, UNet: s.unet, TE: s.te, Blocks: s.blocks}
	}
	plan, err := NewPlan(keys, adapters)
	if err != nil {
		return nil, err
	}
	key := paramsKey(req.Params)
	if _, ok := p.plans[key]; !ok {
		p.order = append(p.order, key)
		if len(p.order) > 4 {
			delete(p.plans, p.order[0])
			p.order = p.order[1:]
		}
	}
	p.plans[key] = plan
	resp := &sdk.PlanPatchResponse{Touched: plan.Keys(), ReadsOriginals: true}
	for _, ig := range plan.Ignored {
		resp.Warnings = append(resp.Warnings, "ignored: "+ig)
	}
	return resp, nil
}

// PatchWeights merges every granted tensor in place (they hold original
// values, or come with an input of the same name holding them), in
// parallel across tensors.
func (p *Plugin) PatchWeights(ctx context.Context, req *sdk.PatchWeightsRequest) (*sdk.PatchWeightsResponse, error) {
	p.mu.Lock()
	plan, ok := p.plans[paramsKey(req.Params)]
	p.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("lora: PatchWeights without a matching PlanPatch")
	}
	origs := make(map[string]*sdk.Tensor, len(req.Inputs))
	for _, in := range req.Inputs {
		origs[in.Name] = in
	}
	granted := make(map[string]bool, len(req.Tensors))
	for _, t := range req.Tensors {
		granted[t.Name] = true
		if in, ok := origs[t.Name]; ok {
			if err := checkOriginal(in, t); err != nil {
				return nil, err
			}
		}
		if _, ok := plan.Target(t.Name); !ok {
			return nil, fmt.Errorf("lora: tensor %q is not touched by the planned adapters", t.Name)
		}
		if t.OnDevice() {
			continue // F32 or F16, checked by patchDevice
		}
		if !t.Writable || t.DType != sdk.F32 {
			return nil, fmt.Errorf("lora: tensor %q must be granted writable F32 (is %s, writable=%v)", t.Name, t.DType, t.Writable)
		}
	}
	for name := range origs {
		if !granted[name] {
			return nil, fmt.Errorf("lora: input %q pairs with no granted tensor", name)
		}
	}
	work := make(chan *sdk.Tensor)
	errs := make(chan error, len(req.Tensors))
	var wg sync.WaitGroup
	for range max(1, runtime.GOMAXPROCS(0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range work {
				w, err := t.MutableFloat32() // [numel], the host's arena
				if err == nil {
					if in, ok := origs[t.Name]; ok {
						err = applyFromOriginal(plan, t.Name, in, w)
					} else {
						err = plan.Apply(t.Name, w, w)
					}
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	var onDev []*sdk.Tensor
	for _, t := range req.Tensors {
		if ctx.Err() != nil {
			break
		}
		if t.OnDevice() {
			onDev = append(onDev, t)
			continue
		}
		work <- t
	}
	close(work)
	// Device tensors, queued from here on the device's one stream: the
	// plain LoRA ones in one lora_batch launch per dtype (restore from a
	// device original fused in), the others one by one (device_batch.go).
	if len(onDev) > 0 && ctx.Err() == nil {
		if err := p.PatchDeviceBatch(plan, onDev, origs); err != nil {
			errs <- err
		}
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &sdk.PatchWeightsResponse{Written: sdk.Refs(req.Tensors...)}, nil
}

// checkOriginal checks an input holds the original of granted tensor t.
func checkOriginal(in, t *sdk.Tensor) error {
	switch in.DType {
	case sdk.F16, sdk.BF16, sdk.F32:
	default:
		return fmt.Errorf("lora: original of %q is %s, want F16, BF16 or F32", t.Name, in.DType)
	}
	if in.Numel() != t.Numel() || !in.OnDevice() && len(in.Bytes()) != in.Numel()*in.DType.Size() {
		return fmt.Errorf("lora: original of %q has shape %v, tensor %v", t.Name, in.Shape, t.Shape)
	}
	return nil
}

// applyFromOriginal merges tensor name into w from in, its original stored
// values, in one pass. in may be a mapped file that shrank: a fault reading
// it becomes an error, not a crash.
func applyFromOriginal(plan *Plan, name string, in *sdk.Tensor, w []float32) (err error) {
	b := in.Bytes()
	var widen func(lo, hi int) error
	switch in.DType {
	case sdk.F16, sdk.BF16:
		src := unsafe.Slice((*uint16)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/2)
		conv := safetensors.F16ToF32
		if in.DType == sdk.BF16 {
			conv = safetensors.BF16ToF32
		}
		widen = func(lo, hi int) error { conv(w[lo:hi], src[lo:hi]); return nil }
	default:
		src, ferr := in.Float32()
		if ferr != nil {
			return ferr
		}
		widen = func(lo, hi int) error { copy(w[lo:hi], src[lo:hi]); return nil }
	}
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			if re, ok := r.(interface{ Addr() uintptr }); ok {
				err = fmt.Errorf("lora: reading the original of %q faulted at %#x (did the checkpoint file shrink?)", name, re.Addr())
				return
			}
			panic(r)
		}
	}()
	return plan.ApplyFrom(name, w, widen)
}
