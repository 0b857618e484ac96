// ella_device.go: ELLAConditioner with its context buffers on the GPU
// (ELLAOptions.GPU). Each half (cond, uncond) owns one device allocation
// holding its whole context [1, Q(+77k), D] in the GPU's dtype, shared with
// the plugin as a device arena; the plugin writes the connector's output
// into its first Q rows and, in concat mode, the CLIP rows after them are
// uploaded once, so a step costs one plugin call and no copy. ContextGPU
// returns the buffer as a device tensor, valid until the next call for the
// same half.
//
// It does not free a buffer the plugin still maps (Close unmaps first).
package host

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// deviceHalf gives h (whose plugin shape h.shape is [1, Q, D]) its device
// context buffer and, in concat mode, the CLIP rows after the ELLA rows.
func (e *ELLAConditioner) deviceHalf(ctx context.Context, h *ellaHalf, text string, cond bool, what string) error {
	g := e.opt.GPU
	q, d := h.shape[1], h.shape[2]
	rows := q
	if e.opt.Mode == ELLAConcat {
		clip, err := e.opt.CLIP.EncodePrompt(ctx, text) // [1, 77k, D]
		if err != nil {
			return fmt.Errorf("ella + clip: %s: %w", what, err)
		}
		if len(clip.Shape) != 3 || clip.Shape[0] != 1 || clip.Shape[2] != d {
			return fmt.Errorf("ella + clip: CLIP context has shape %v, want [1, L, %d]", clip.Shape, d)
		}
		h.clip = clip
		rows += clip.Shape[1]
	}
	es := g.DType.Size()
	buf, err := g.Dev.Alloc(rows * d * es)
	if err != nil {
		return fmt.Errorf("ella: device context buffer: %w", err)
	}
	name := "ella.uncond"
	if cond {
		name = "ella.cond"
	}
	a, err := NewDeviceArena("ella-context", buf, true)
	if err != nil {
		buf.Free()
		return fmt.Errorf("ella: %w", err)
	}
	h.dev, h.devA = buf, a
	h.gpu = &nn.GPUTensor{Shape: []int{1, rows, d}, DType: g.DType, Buf: buf} // [1, Q(+77k), D]
	dt := sdk.F32
	if g.DType == nn.GPUF16 {
		dt = sdk.F16
	}
	if h.ref, err = DeviceRefOf(name, buf, dt, h.shape, true); err != nil {
		return fmt.Errorf("ella: %w", err)
	}
	if h.clip != nil {
		up, err := g.Upload(h.clip) // [1, 77k, D] in the GPU's dtype
		if err != nil {
			return fmt.Errorf("ella + clip: uploading the CLIP context: %w", err)
		}
		defer up.Free()
		tail, err := buf.Slice(q*d*es, up.Bytes())
		if err == nil {
			err = tail.CopyFrom(up.Buf, up.Bytes())
		}
		if err != nil {
			return fmt.Errorf("ella + clip: placing the CLIP context: %w", err)
		}
	}
	return nil
}

// ContextGPU is Context for a U-Net on the GPU (ELLAOptions.GPU set): the
// context [1, L, D] as a view of the half's device buffer.
func (e *ELLAConditioner) ContextGPU(ctx context.Context, t float32, cond bool) (*nn.GPUTensor, error) {
	if e.opt.GPU == nil {
		return nil, errors.New("ella: ContextGPU without ELLAOptions.GPU")
	}
	h, err := e.step(ctx, t, cond)
	if err != nil {
		return nil, err
	}
	return h.gpu, nil
}

// closeDeviceHalf unmaps h's device arena from the plugin (if it runs) and
// frees the buffer.
func (e *ELLAConditioner) closeDeviceHalf(h *ellaHalf, running bool) error {
	if h.devA == nil {
		return nil
	}
	var errs []error
	if u, ok := e.plugin.(arenaUnmapper); ok && running {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		errs = append(errs, u.Unmap(ctx, h.devA))
		cancel()
	}
	errs = append(errs, h.devA.Close(), h.dev.Free())
	h.devA, h.dev, h.gpu = nil, nil, nil
	return errors.Join(errs...)
}
