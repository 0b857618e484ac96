// controlnet_devctx.go: ControlNetSource with the U-Net context on the
// device (ELLA's context on a GPU pipeline). ResidualsGPUContext takes the
// context as a device tensor: each plugin call gets its rows copied on the
// device (DtoD) into a staging allocation the source owns, shared with the
// plugin as a read-only device arena, so the context never goes to the
// host. The staging copy keeps the legacy-IPC lifetime rule simple: the
// plugin maps only memory this source frees, after unmapping it (Close),
// never the conditioner's or the denoiser's buffers.
//
// It does not put x on the device (the samplers run on the CPU; x goes
// through the host input arena as before), and a unit's prompt override
// (ControlNetUnit.Context, a host tensor) still goes through host memory.
package host

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// cnContext is the context of a ControlNet call: a host tensor or a device
// tensor, [N, L, D] either way (exactly one is set).
type cnContext struct {
	host *nn.Tensor    // [N, L, D]
	dev  *nn.GPUTensor // [N, L, D]
}

// shape is the context's shape (nil when neither is set).
func (c cnContext) shape() []int {
	switch {
	case c.dev != nil:
		return c.dev.Shape
	case c.host != nil:
		return c.host.Shape
	}
	return nil
}

// rows returns rows [r0, r1) of the context: views, no copy.
func (c cnContext) rows(r0, r1 int) (cnContext, error) {
	s := c.shape()
	per := shapeNumel(s[1:])
	if c.dev == nil {
		return cnContext{host: nn.From(c.host.Data[r0*per:r1*per], r1-r0, s[1], s[2])}, nil // [r1-r0, L, D]
	}
	es := c.dev.DType.Size()
	v, err := c.dev.Buf.Slice(r0*per*es, (r1-r0)*per*es)
	if err != nil {
		return cnContext{}, err
	}
	return cnContext{dev: &nn.GPUTensor{Shape: []int{r1 - r0, s[1], s[2]}, DType: c.dev.DType, Buf: v}}, nil // [r1-r0, L, D]
}

// deviceContext is the source's staging allocation for device contexts
// and its device arena.
type deviceContext struct {
	buf   *cuda.Buffer
	arena *Arena
}

// ResidualsGPUContext is ResidualsGPU with the context uctx [N, L, D] on
// the device (in the GPU's dtype, on ControlNetOptions.GPU's device): it
// reaches the plugin as a device arena ref, with no copy to the host.
func (s *ControlNetSource) ResidualsGPUContext(ctx context.Context, x *nn.Tensor, t []float32, uctx *nn.GPUTensor) (models.GPUResiduals, error) {
	g := s.opt.GPU
	switch {
	case g == nil:
		return nil, errors.New("controlnet: ResidualsGPUContext without ControlNetOptions.GPU")
	case uctx == nil:
		return nil, errors.New("controlnet: no device context")
	case uctx.DType != g.DType || uctx.Buf.Device() != g.Dev:
		return nil, fmt.Errorf("controlnet: device context is %s on %s, the residual buffers %s on %s", uctx.DType, uctx.Buf.Device(), g.DType, g.Dev)
	}
	wrote, err := s.compute(ctx, x, t, cnContext{dev: uctx})
	if err != nil || !wrote {
		return nil, err
	}
	return s.bufs.gpuResiduals(), nil
}

// deviceContextRef copies c [n, L, D] into the staging allocation (grown
// when too small) and returns its read-only ref.
func (s *ControlNetSource) deviceContextRef(c *nn.GPUTensor) (*sdk.Tensor, error) {
	start := time.Now()
	defer func() { s.stats.HandOff += time.Since(start) }()
	n := c.Bytes()
	if s.devCtx != nil && s.devCtx.buf.Size < n {
		if err := s.closeDeviceContext(); err != nil {
			return nil, err
		}
	}
	if s.devCtx == nil {
		buf, err := s.opt.GPU.Dev.Alloc(n)
		if err != nil {
			return nil, fmt.Errorf("controlnet: device context staging (%d bytes): %w", n, err)
		}
		a, err := NewDeviceArena("controlnet-context", buf, false)
		if err != nil {
			buf.Free()
			return nil, fmt.Errorf("controlnet: device context staging: %w", err)
		}
		s.devCtx = &deviceContext{buf: buf, arena: a}
	}
	v, err := s.devCtx.buf.Slice(0, n)
	if err == nil {
		err = v.CopyFrom(c.Buf, n)
	}
	if err != nil {
		return nil, fmt.Errorf("controlnet: staging the device context: %w", err)
	}
	dt := sdk.F32
	if c.DType == nn.GPUF16 {
		dt = sdk.F16
	}
	ref, err := DeviceRefOf("context", v, dt, c.Shape, false)
	if err != nil {
		return nil, fmt.Errorf("controlnet: %w", err)
	}
	return sdk.Ref(ref), nil
}

// closeDeviceContext has the plugin unmap the staging arena, then frees it
// (legacy IPC: the exporter must outlive importers).
func (s *ControlNetSource) closeDeviceContext() error {
	if s.devCtx == nil {
		return nil
	}
	var err error
	if um, ok := s.plugin.(arenaUnmapper); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = um.Unmap(ctx, s.devCtx.arena)
		cancel()
	}
	err = errors.Join(err, s.devCtx.arena.Close(), s.devCtx.buf.Free())
	s.devCtx = nil
	return err
}
