// gpu.go: the ControlNet plugin on a CUDA device. When the host grants the
// residual outputs in device arenas (protocol minor 2), the net runs on
// that device (models.ControlNetCUDA, weights uploaded once per net,
// device and dtype) in the outputs' dtype, and writes the residuals
// straight into the host's buffers: ForwardEncodedGPU fills them directly
// when every scale is 1 without accumulation or pooling, else the raw
// residuals are scaled into them (cuda/kernels/plugins.cu). x and the
// context may each be a device tensor (read in place) or a host tensor
// (uploaded);
// encoded hints are cached on the device like the CPU cache. The SDK
// synchronises the device before the reply.
//
// It does not mix devices in one call, and keeps the CPU path (plugin.go)
// for host-memory outputs.
package controlnet

import (
	"fmt"
	"slices"
	"sync"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// gpuKey names one net on one device in one storage dtype.
type gpuKey struct {
	net netKey
	dev *cuda.Device
	dt  nn.GPUDType
}

// gpuNet is a net's device copy and its device hint cache.
type gpuNet struct {
	g  *nn.GPU
	cn *models.ControlNetCUDA

	mu    sync.Mutex
	hints map[string]*nn.GPUTensor // hint key -> [1 or B, mc, h, w]
	order []string
}

// gpuNet returns the device copy of ln for dev and dt, uploading it once.
func (p *Plugin) gpuNet(key netKey, ln *loadedNet, dev *cuda.Device, dt nn.GPUDType) (*gpuNet, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := gpuKey{key, dev, dt}
	if gn, ok := p.gpuNets[k]; ok {
		return gn, nil
	}
	bl, ok := p.blas[dev]
	if !ok {
		var err error
		if bl, err = dev.NewBLAS(); err != nil {
			return nil, fmt.Errorf("cuBLAS on %s: %w", dev, err)
		}
		if p.blas == nil {
			p.blas = map[*cuda.Device]*cuda.BLAS{}
		}
		p.blas[dev] = bl
	}
	g := &nn.GPU{Dev: dev, BLAS: bl, DType: dt}
	cn, err := models.NewControlNetCUDA(g, ln.net)
	if err != nil {
		return nil, err
	}
	gn := &gpuNet{g: g, cn: cn, hints: map[string]*nn.GPUTensor{}}
	if p.gpuNets == nil {
		p.gpuNets = map[gpuKey]*gpuNet{}
	}
	p.gpuNets[k] = gn
	p.log.Info("ControlNet on the GPU", "file", key.path, "device", dev.String(), "dtype", dt.String())
	return gn, nil
}

// deviceOutputs checks every output is a device tensor of one device and
// one dtype, and returns them.
func deviceOutputs(outs []*sdk.Tensor) (*cuda.Device, nn.GPUDType, error) {
	var dev *cuda.Device
	var dt nn.GPUDType
	for i, o := range outs {
		if !o.OnDevice() {
			return nil, 0, fmt.Errorf("output %q is in host memory, %q on a device: grant all outputs in one place", o.Name, outs[0].Name)
		}
		b, _ := o.DeviceBuffer()
		odt, err := sdk.GPUDType(o.DType)
		if err != nil {
			return nil, 0, fmt.Errorf("output %q: %w", o.Name, err)
		}
		if i == 0 {
			dev, dt = b.Device(), odt
		} else if b.Device() != dev || odt != dt {
			return nil, 0, fmt.Errorf("output %q: all outputs must be on one device in one dtype", o.Name)
		}
	}
	return dev, dt, nil
}

// residualsGPU is Residuals for device outputs.
func (p *Plugin) residualsGPU(req *sdk.ResidualsRequest, key netKey, ln *loadedNet) error {
	if len(req.Outputs) == 0 {
		return fmt.Errorf("no output tensors granted")
	}
	dev, dt, err := deviceOutputs(req.Outputs)
	if err != nil {
		return err
	}
	gn, err := p.gpuNet(key, ln, dev, dt)
	if err != nil {
		return err
	}
	g := gn.g
	var tmp []*nn.GPUTensor
	defer func() {
		for _, t := range tmp {
			t.Free()
		}
	}()
	x, cx, err := gpuStepInputs(g, req, &tmp)
	if err != nil {
		return err
	}
	guided, err := gn.encodedHint(req, x.Shape, ln.net.Hint.HintChannels(), &tmp)
	if err != nil {
		return err
	}
	scales, acc, pool, err := outputOptions(req)
	if err != nil {
		return err
	}
	direct := !acc && !pool && !slices.ContainsFunc(scales, func(s float32) bool { return s != 1 })
	dst := models.GPUResiduals{}
	outs := make([]*nn.GPUTensor, len(req.Outputs))
	for i, o := range req.Outputs {
		if outs[i], err = o.MutableGPUTensor(); err != nil {
			return err
		}
		if direct {
			dst[o.Name] = outs[i]
		}
	}
	res, err := gn.cn.ForwardEncodedGPU(x, guided, slices.Clone(req.Timesteps), cx, dst)
	if err != nil {
		return err
	}
	for name, r := range res {
		if dst[name] != r {
			tmp = append(tmp, r)
		}
	}
	for i, o := range req.Outputs {
		r, ok := res[o.Name]
		if !ok {
			return fmt.Errorf("output %q: the ControlNet has no such residual (want input_blocks.0..%d or middle_block)", o.Name, len(res)-2)
		}
		if !slices.Equal(o.Shape, r.Shape) {
			return fmt.Errorf("output %q is %s %v, the residual is %v", o.Name, o.DType, o.Shape, r.Shape)
		}
		if direct {
			continue
		}
		a := 0
		if acc {
			a = 1
		}
		if pool {
			planes := r.Shape[0] * r.Shape[1]
			err = launchPlugins(dev, "plane_mean_into", dt, cuda.Dim3{X: uint32(planes)}, outs[i].Buf, r.Buf, scales[i], a, r.Shape[2]*r.Shape[3])
		} else {
			n := r.Numel()
			err = launchPlugins(dev, "scale_into", dt, gridFor(n), outs[i].Buf, r.Buf, scales[i], a, int64(n))
		}
		if err != nil {
			return fmt.Errorf("output %q: %w", o.Name, err)
		}
	}
	return nil
}

// gpuStepInputs returns x [B, 4, h, w] and the context [B, L, D] on g:
// views of device inputs or uploads of host inputs, each on its own (the
// host keeps x in host memory and may grant the context on the device, so
// a context already on the GPU never crosses to the host), the first 4
// channels copied out of a 9-channel inpainting input; new tensors go to
// tmp.
func gpuStepInputs(g *nn.GPU, req *sdk.ResidualsRequest, tmp *[]*nn.GPUTensor) (x, cx *nn.GPUTensor, err error) {
	if req.X == nil || req.Context == nil {
		return nil, nil, fmt.Errorf("residuals need x and context tensors")
	}
	s := req.X.Shape
	if len(s) != 4 || (s[1] != 4 && s[1] != 9) {
		return nil, nil, fmt.Errorf("x has shape %v, want [B, 4, h, w] (or 9 channels for inpainting)", s)
	}
	if len(req.Timesteps) != s[0] {
		return nil, nil, fmt.Errorf("%d timesteps for a batch of %d", len(req.Timesteps), s[0])
	}
	if x, err = gpuInput(g, req.X, tmp); err != nil {
		return nil, nil, err
	}
	if cx, err = gpuInput(g, req.Context, tmp); err != nil {
		return nil, nil, err
	}
	if len(cx.Shape) != 3 || cx.Shape[0] != s[0] {
		return nil, nil, fmt.Errorf("context has shape %v, want [%d, L, D]", cx.Shape, s[0])
	}
	if s[1] == 9 {
		lead, err := g.Empty(s[0], 4, s[2], s[3]) // [B, 4, h, w]
		if err != nil {
			return nil, nil, err
		}
		*tmp = append(*tmp, lead)
		n := lead.Numel()
		if err := launchPlugins(g.Dev, "lead_channels", g.DType, gridFor(n), x.Buf, lead.Buf, 9, 4, int64(s[2]*s[3]), int64(n)); err != nil {
			return nil, nil, err
		}
		x = lead
	}
	return x, cx, nil
}

// gpuInput is input tensor t on g: a view when it is on the device (in
// g's dtype), else an upload in g's dtype (added to tmp).
func gpuInput(g *nn.GPU, t *sdk.Tensor, tmp *[]*nn.GPUTensor) (*nn.GPUTensor, error) {
	if t.OnDevice() {
		v, err := t.GPUTensor()
		if err != nil {
			return nil, err
		}
		if v.DType != g.DType {
			return nil, fmt.Errorf("input %q is %s, the outputs %s: one dtype on the device", t.Name, t.DType, g.DType)
		}
		return v, nil
	}
	data, err := t.Float32()
	if err != nil {
		return nil, err
	}
	up, err := g.Upload(nn.From(data, t.Shape...)) // read only: copied to the device
	if err != nil {
		return nil, fmt.Errorf("uploading input %q: %w", t.Name, err)
	}
	*tmp = append(*tmp, up)
	return up, nil
}

// encodedHint is loadedNet.encodedHint on the device; an encoding without
// a cache key goes to tmp (freed after the call).
func (gn *gpuNet) encodedHint(req *sdk.ResidualsRequest, xShape []int, channels int, tmp *[]*nn.GPUTensor) (*nn.GPUTensor, error) {
	hint, key, err := requestHint(req, xShape, channels)
	if err != nil {
		return nil, err
	}
	if key != "" {
		gn.mu.Lock()
		e, ok := gn.hints[key]
		gn.mu.Unlock()
		if ok {
			return e, nil
		}
	}
	var in *nn.GPUTensor
	if hint.OnDevice() {
		if in, err = hint.GPUTensor(); err != nil {
			return nil, err
		}
	} else {
		data, err := hint.Float32()
		if err != nil {
			return nil, err
		}
		if in, err = gn.g.Upload(nn.From(slices.Clone(data), hint.Shape...)); err != nil {
			return nil, err
		}
		defer in.Free()
	}
	e, err := gn.cn.HintEncodeGPU(in) // [1 or B, mc, h, w]
	if err != nil {
		return nil, err
	}
	if key == "" {
		*tmp = append(*tmp, e)
		return e, nil
	}
	gn.mu.Lock()
	defer gn.mu.Unlock()
	if old, ok := gn.hints[key]; ok {
		e.Free()
		return old, nil
	}
	gn.hints[key] = e
	gn.order = append(gn.order, key)
	if len(gn.order) > hintCacheSize {
		gn.hints[gn.order[0]].Free()
		delete(gn.hints, gn.order[0])
		gn.order = gn.order[1:]
	}
	return e, nil
}

// outputOptions reads the scales (one per output), accumulate and
// global-pool parameters.
func outputOptions(req *sdk.ResidualsRequest) (scales []float32, acc, pool bool, err error) {
	scales = make([]float32, len(req.Outputs))
	for i := range scales {
		scales[i] = 1
	}
	if s, ok := req.Params.Get(ParamScales); ok {
		if scales, err = DecodeScales(s, len(req.Outputs)); err != nil {
			return nil, false, false, err
		}
	}
	acc = req.Params.String(ParamAccumulate, "false") == "true"
	pool = req.Params.String(ParamGlobalPool, "false") == "true"
	return scales, acc, pool, nil
}

// pluginBlock is the thread count of the plugins.cu launches.
const pluginBlock = 256

func gridFor(n int) cuda.Dim3 {
	return cuda.Dim3{X: uint32(min(max((n+pluginBlock-1)/pluginBlock, 1), 1<<20))}
}

// launchPlugins runs plugins.cu kernel name for dtype dt.
func launchPlugins(dev *cuda.Device, name string, dt nn.GPUDType, grid cuda.Dim3, args ...any) error {
	f, err := dev.Kernel("plugins.cu", name+"_"+dt.String())
	if err != nil {
		return err
	}
	return f.Launch(grid, cuda.Dim3{X: pluginBlock}, 0, args...)
}
