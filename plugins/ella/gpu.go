// gpu.go: the ELLA plugin's connector on a CUDA device. When the host
// grants the context buffer in a device arena (protocol minor 2), the
// connector runs on that device (models.ELLACUDA, weights uploaded once
// per configuration, device and dtype) in the buffer's dtype: the prompt's
// T5 features are projected once per prompt on the device (cached, a few
// prompts deep), every Conditioning call runs all its timesteps in one
// batch and the result is copied into the host's buffer on the device. The
// SDK synchronises the device before the reply.
//
// T5 runs on the GPU when EncodePrompt's "device" parameter names one
// (models.T5CUDA, fp32, uploaded once per configuration and device); its
// features come back to the CPU (once per prompt) for the cache. The
// device copies of a configuration are freed when another one is loaded.
package ella

import (
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// gpuKey names one configuration's connector on one device in one dtype.
type gpuKey struct {
	m   *Models
	dev *cuda.Device
	dt  nn.GPUDType
}

// gpuConnector is a connector's device copy and its prepared prompts.
type gpuConnector struct {
	c *models.ELLACUDA

	mu    sync.Mutex
	texts map[*encoded]*models.ELLATextCUDA // [1, N, W] each
	order []*encoded
}

// gpuConnector returns the device copy of m's connector, uploading it once.
func (p *Plugin) gpuConnector(m *Models, dev *cuda.Device, dt nn.GPUDType) (*gpuConnector, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := gpuKey{m, dev, dt}
	if gc, ok := p.gpus[k]; ok {
		return gc, nil
	}
	bl, err := p.deviceBLAS(dev)
	if err != nil {
		return nil, err
	}
	c, err := models.NewELLACUDA(&nn.GPU{Dev: dev, BLAS: bl, DType: dt}, m.ELLA)
	if err != nil {
		return nil, err
	}
	gc := &gpuConnector{c: c, texts: map[*encoded]*models.ELLATextCUDA{}}
	if p.gpus == nil {
		p.gpus = map[gpuKey]*gpuConnector{}
	}
	p.gpus[k] = gc
	p.log.Info("ELLA connector on the GPU", "ella", m.Config.ELLAPath, "device", dev.String(), "dtype", dt.String())
	return gc, nil
}

// dropGPU frees the device copies of every configuration but keep (p.mu
// held).
func (p *Plugin) dropGPU(keep *Models) {
	for k, gc := range p.gpus {
		if k.m == keep {
			continue
		}
		gc.close()
		delete(p.gpus, k)
	}
	for k, t := range p.t5s {
		if k.m != keep {
			t.Close()
			delete(p.t5s, k)
		}
	}
}

// t5Key names one configuration's T5 on one device.
type t5Key struct {
	m   *Models
	dev *cuda.Device
}

// t5For returns the T5 that encodes prompts on device ("cpu" or "cuda:N"),
// uploading it to the GPU once.
func (p *Plugin) t5For(m *Models, device string) (t5Encoder, error) {
	if device == "" || device == "cpu" {
		return m.T5, nil
	}
	ord, ok := strings.CutPrefix(device, "cuda:")
	n, err := strconv.Atoi(ord)
	if !ok || err != nil || n < 0 {
		return nil, fmt.Errorf("%w: parameter %q = %q: want cpu or cuda:N", ErrConfig, ParamDevice, device)
	}
	dev, err := sdk.CUDADevice(n)
	if err != nil {
		return nil, fmt.Errorf("ella: T5 on %s: %w", device, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	k := t5Key{m, dev}
	if t, ok := p.t5s[k]; ok {
		return t, nil
	}
	bl, err := p.deviceBLAS(dev)
	if err != nil {
		return nil, err
	}
	t, err := models.NewT5CUDA(&nn.GPU{Dev: dev, BLAS: bl}, m.T5)
	if err != nil {
		return nil, fmt.Errorf("ella: T5 %s on %s: %w", m.Config.T5Dir, device, err)
	}
	if p.t5s == nil {
		p.t5s = map[t5Key]*models.T5CUDA{}
	}
	p.t5s[k] = t
	p.log.Info("T5 on the GPU", "t5", m.Config.T5Dir, "device", dev.String())
	return t, nil
}

// deviceBLAS returns the plugin's cuBLAS handle on dev (p.mu held).
func (p *Plugin) deviceBLAS(dev *cuda.Device) (*cuda.BLAS, error) {
	if bl, ok := p.blas[dev]; ok {
		return bl, nil
	}
	bl, err := dev.NewBLAS()
	if err != nil {
		return nil, fmt.Errorf("ella: cuBLAS on %s: %w", dev, err)
	}
	if p.blas == nil {
		p.blas = map[*cuda.Device]*cuda.BLAS{}
	}
	p.blas[dev] = bl
	return bl, nil
}

func (gc *gpuConnector) close() {
	gc.mu.Lock()
	defer gc.mu.Unlock()
	for _, t := range gc.texts {
		t.Free()
	}
	gc.texts, gc.order = nil, nil
	gc.c.Close()
}

// text returns the prompt's projected features on the device.
func (gc *gpuConnector) text(enc *encoded) (*models.ELLATextCUDA, error) {
	gc.mu.Lock()
	defer gc.mu.Unlock()
	if t, ok := gc.texts[enc]; ok {
		return t, nil
	}
	t, err := gc.c.Prepare(enc.features) // [1, N, W]
	if err != nil {
		return nil, err
	}
	gc.texts[enc] = t
	gc.order = append(gc.order, enc)
	if len(gc.order) > DefaultCacheSize {
		gc.texts[gc.order[0]].Free()
		delete(gc.texts, gc.order[0])
		gc.order = gc.order[1:]
	}
	return t, nil
}

// conditioningGPU writes the connector's output for ts into out [b, Q, W],
// a device tensor.
func (p *Plugin) conditioningGPU(h *handle, out *sdk.Tensor, ts []float32, b int) error {
	buf, err := out.MutableDeviceBuffer()
	if err != nil {
		return err
	}
	dt, err := sdk.GPUDType(out.DType)
	if err != nil {
		return fmt.Errorf("output %q: %w", out.Name, err)
	}
	gc, err := p.gpuConnector(h.m, buf.Device(), dt)
	if err != nil {
		return err
	}
	text, err := gc.text(h.enc)
	if err != nil {
		return err
	}
	cond, err := gc.c.ConditioningGPU(text, ts) // [len(ts), Q, W]
	if err != nil {
		return err
	}
	defer cond.Free()
	row := cond.Bytes() / cond.Shape[0]
	if cond.Shape[0] == b {
		return buf.CopyFrom(cond.Buf, b*row)
	}
	for i := range b {
		dst, err := buf.Slice(i*row, row)
		if err != nil {
			return err
		}
		if err := dst.CopyFrom(cond.Buf, row); err != nil {
			return err
		}
	}
	return nil
}
