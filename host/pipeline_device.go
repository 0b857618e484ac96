// pipeline_device.go moves a loaded pipeline's models onto its Device: the
// U-Net, the VAE decoder and the CLIP text encoder are wrapped by their
// CUDA types (models.*CUDA: CPU tensors in and out, weights uploaded once
// in the device's dtype). LoRAs patch the device copies that expose their
// weights in place (pipeline_lora.go); the others are patched on the host
// and SyncDevice re-uploads them. The device copies' out-of-memory errors
// name the model and the shape it ran at (explainOOM). It does not open
// the device (device.go) or choose where plugins compute (their options
// do).
package host

import (
	"context"
	"errors"
	"fmt"
	"reflect"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
)

// TextEncoder is the CLIP text model the prompt encoder runs:
// *models.CLIPTextModel on the CPU, its CUDA twin on a GPU.
type TextEncoder interface {
	// EncodeSkip encodes ids [B, L] to [B, L, D], skipping the last
	// skip-1 layers (0 or 1: last layer), after the final layer norm.
	EncodeSkip(ids [][]int, skip int) (*nn.Tensor, error)
}

// deviceModel is a model copy on the device, freed by Close.
type deviceModel interface {
	Close() error
}

// syncer is a device copy whose weights Sync re-uploads from the CPU
// tensors (a LoRA patched them); the patchable models (U-Net, CLIP) have it.
type syncer interface {
	Sync(ts []*nn.Tensor) error
}

// onDevice is what toDevice moved: the device copies and, for SyncDevice,
// the CPU models whose weights they mirror.
type onDevice struct {
	dev     *Device
	copies  []deviceModel
	weights []any // the CPU models behind copies, in the same order
	// The device copies the pipeline calls.
	eps EpsModel
	dec ImageDecoder
	enc TextEncoder
	// patchSet registers the device weights that are LoRA targets, and
	// onDevicePatch marks (by index in copies) the models patched on the
	// device, whose host copies stay unpatched (pipeline_lora.go).
	patchSet      *DeviceArenaSet
	onDevicePatch map[int]bool
}

// toDevice wraps the CPU models with their CUDA types on d. On error what
// was moved is freed again.
func (l *Loaded) toDevice(d *Device, unet *models.UNet, vae *models.VAE, clip *models.CLIPTextModel) error {
	if !d.OnGPU() {
		return nil
	}
	l.device = &onDevice{dev: d, onDevicePatch: map[int]bool{}}
	if err := l.moveParts(d, unet, vae, clip); err != nil {
		l.closeDevice()
		if oe := explainOOM(err, "uploading the weights to "+d.GPU.Dev.String(), d.DType); oe != err {
			return oe
		}
		return fmt.Errorf("moving the models to %s: %w", d, err)
	}
	return nil
}

// track records a device copy of the CPU model cpu.
func (o *onDevice) track(m deviceModel, cpu any) {
	o.copies = append(o.copies, m)
	o.weights = append(o.weights, cpu)
}

// closeDevice frees every device copy (the Device itself stays open: its
// opener closes it).
func (l *Loaded) closeDevice() error {
	if l.device == nil {
		return nil
	}
	errs := []error{l.closePatchSet()}
	for i := len(l.device.copies) - 1; i >= 0; i-- {
		errs = append(errs, l.device.copies[i].Close())
	}
	l.device = nil
	return errors.Join(errs...)
}

// OnGPU reports whether the pipeline computes on a GPU.
func (l *Loaded) OnGPU() bool { return l.device != nil && len(l.device.copies) > 0 }

// Device is the device the pipeline computes on (the CPU device when it
// was loaded without one).
func (l *Loaded) Device() *Device {
	if l.device == nil {
		return CPUDevice()
	}
	return l.device.dev
}

// GPU is the pipeline's GPU, nil on the CPU. Plugin hooks given it
// (ControlNetOptions.GPU, ELLAOptions.GPU) compute there and hand their
// outputs over in its memory.
func (l *Loaded) GPU() *nn.GPU {
	if !l.OnGPU() {
		return nil
	}
	return l.device.dev.GPU
}

// SyncDevice re-uploads, from their CPU models, the weights of the device
// copies that LoRAs patch on the host (the CLIP text encoder; not the
// U-Net of a patchable pipeline, patched on the device), after ApplyLoRAs
// patched the CPU tensors. Tensors the device never uploaded are skipped.
// It is a no-op on the CPU.
func (l *Loaded) SyncDevice() error {
	if l.device == nil {
		return nil
	}
	for i, m := range l.device.copies {
		s, ok := m.(syncer)
		if !ok || l.device.onDevicePatch[i] {
			continue // not patchable (the VAE), or patched on the device
		}
		if err := s.Sync(weightTensors(l.device.weights[i])); err != nil {
			return fmt.Errorf("re-uploading patched weights to %s: %w", l.device.dev, err)
		}
	}
	return nil
}

// UseLoRAs is ApplyLoRAs followed by SyncDevice: the LoRA plugin patches
// the weights (the device copies that expose them in place, the others in
// the shared host arenas), then the host-patched device copies are
// refreshed.
func (l *Loaded) UseLoRAs(ctx context.Context, sup *Supervisor, loras []LoRASpec) error {
	if err := l.ApplyLoRAs(ctx, sup, loras); err != nil {
		return err
	}
	return l.SyncDevice()
}

var tensorType = reflect.TypeFor[*nn.Tensor]()

// weightTensors lists every *nn.Tensor reachable from the model m (struct
// fields, pointers, slices, arrays and maps, each tensor once).
func weightTensors(m any) []*nn.Tensor {
	var out []*nn.Tensor
	type ref struct {
		t reflect.Type
		p uintptr
	}
	seen := map[ref]bool{} // by type too: a struct and its first field share an address
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Pointer:
			r := ref{v.Type(), v.Pointer()}
			if v.IsNil() || seen[r] {
				return
			}
			seen[r] = true
			if v.Type() == tensorType {
				out = append(out, v.Interface().(*nn.Tensor))
				return
			}
			walk(v.Elem())
		case reflect.Interface:
			if !v.IsNil() {
				walk(v.Elem())
			}
		case reflect.Struct:
			for i := range v.NumField() {
				if v.Type().Field(i).IsExported() {
					walk(v.Field(i))
				}
			}
		case reflect.Slice, reflect.Array:
			if v.Kind() == reflect.Slice && v.IsNil() {
				return
			}
			if e := v.Type().Elem(); e.Kind() != reflect.Pointer && e.Kind() != reflect.Struct &&
				e.Kind() != reflect.Slice && e.Kind() != reflect.Array && e.Kind() != reflect.Interface && e.Kind() != reflect.Map {
				return // plain values: no tensors inside
			}
			for i := range v.Len() {
				walk(v.Index(i))
			}
		case reflect.Map:
			it := v.MapRange()
			for it.Next() {
				walk(it.Value())
			}
		}
	}
	walk(reflect.ValueOf(m))
	return out
}

// moveParts wraps each part that has a CUDA type.
func (l *Loaded) moveParts(d *Device, unet *models.UNet, vae *models.VAE, clip *models.CLIPTextModel) error {
	o := l.device
	u, err := models.NewUNetCUDA(d.GPU, unet)
	if err != nil {
		return fmt.Errorf("u-net: %w", err)
	}
	o.track(u, unet)
	o.eps = oomUNet{deviceUNet{UNetCUDA: u, g: d.GPU}, d.DType}
	v, err := models.NewVAEDecoderCUDA(d.GPU, vae)
	if err != nil {
		return fmt.Errorf("vae decoder: %w", err)
	}
	o.track(v, vae)
	o.dec = oomDecoder{v, d.DType}
	c, err := models.NewCLIPCUDA(d.GPU, clip)
	if err != nil {
		return fmt.Errorf("clip text encoder: %w", err)
	}
	o.track(c, clip)
	o.enc = oomTextEncoder{c, d.DType}
	return nil
}

// oomUNet is the device U-Net whose out-of-memory errors name the
// activations' shape (explainOOM); the weights are already on the device.
type oomUNet struct {
	deviceUNet
	dtype string // the activations' (DTypeF16 or DTypeF32)
}

// Forward implements EpsModel: x [N, C, H, W], ctx [N, L, D].
func (u oomUNet) Forward(x *nn.Tensor, ts []float32, ctx *nn.Tensor, res models.Residuals) (*nn.Tensor, error) {
	eps, err := u.deviceUNet.Forward(x, ts, ctx, res) // [N, C, H, W]
	return eps, explainOOM(err, activationsAt("the u-net", x), u.dtype)
}

// forwardGPUResiduals implements gpuResidualModel (cfg_device.go).
func (u oomUNet) forwardGPUResiduals(x *nn.Tensor, ts []float32, ctx *nn.Tensor, res models.GPUResiduals) (*nn.Tensor, error) {
	eps, err := u.deviceUNet.forwardGPUResiduals(x, ts, ctx, res) // [N, C, H, W]
	return eps, explainOOM(err, activationsAt("the u-net", x), u.dtype)
}

// forwardGPUContext implements gpuContextModel (cfg_device.go).
func (u oomUNet) forwardGPUContext(x *nn.Tensor, ts []float32, ctx *nn.GPUTensor, res models.GPUResiduals) (*nn.Tensor, error) {
	eps, err := u.deviceUNet.forwardGPUContext(x, ts, ctx, res) // [N, C, H, W]
	return eps, explainOOM(err, activationsAt("the u-net", x), u.dtype)
}

// oomDecoder is the device VAE decoder with explainOOM's errors.
type oomDecoder struct {
	ImageDecoder
	dtype string
}

// Decode implements ImageDecoder: latent [B, 4, h, w] to [B, 3, 8h, 8w].
func (d oomDecoder) Decode(latent *nn.Tensor) (*nn.Tensor, error) {
	img, err := d.ImageDecoder.Decode(latent) // [B, 3, 8h, 8w]
	return img, explainOOM(err, activationsAt("the vae decoder", latent), d.dtype)
}

// oomTextEncoder is the device CLIP text encoder with explainOOM's errors.
type oomTextEncoder struct {
	TextEncoder
	dtype string
}

// EncodeSkip implements TextEncoder: ids [B, L] to [B, L, D].
func (e oomTextEncoder) EncodeSkip(ids [][]int, skip int) (*nn.Tensor, error) {
	out, err := e.TextEncoder.EncodeSkip(ids, skip) // [B, L, D]
	l := 0
	if len(ids) > 0 {
		l = len(ids[0])
	}
	return out, explainOOM(err, fmt.Sprintf("for the clip text encoder's activations at ids [%d %d]", len(ids), l), e.dtype)
}

// activationsAt names the activations of model run on latents x [N, C, h,
// w]: their shape and the image size they stand for.
func activationsAt(model string, x *nn.Tensor) string {
	if x == nil || len(x.Shape) != 4 {
		return "for " + model + "'s activations"
	}
	return fmt.Sprintf("for %s's activations at latents %v (%dx%d pixels)", model, x.Shape, 8*x.Shape[3], 8*x.Shape[2])
}
