// pipeline_device.go moves a loaded pipeline's models onto its Device: the
// U-Net, the VAE decoder and the CLIP text encoder are wrapped by their
// CUDA types (models.*CUDA: CPU tensors in and out, weights uploaded once
// in the device's dtype). A part without a GPU path stays on the CPU and
// says so in Loaded.DeviceNotes. After a LoRA patches the CPU weights
// (ApplyLoRAs on the shared arenas), SyncDevice re-uploads them, until the
// LoRA plugin patches device weights itself. It does not open the device
// (device.go) or choose where plugins compute (their options do).
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

// deviceModel is a model copy on the device: freed by Close, its weights
// re-uploaded from the CPU tensors by Sync (a LoRA patched them).
type deviceModel interface {
	Sync(ts []*nn.Tensor) error
	Close() error
}

// onDevice is what toDevice moved: the device copies and, for SyncDevice,
// the CPU models whose weights they mirror.
type onDevice struct {
	dev     *Device
	copies  []deviceModel
	weights []any // the CPU models behind copies, in the same order
	// The device copies the pipeline calls (nil: that part stays on the CPU).
	eps EpsModel
	dec ImageDecoder
	enc TextEncoder
}

// unet returns the U-Net the pipeline runs: the device copy, else cpu.
func (o *onDevice) unet(cpu *models.UNet) EpsModel {
	if o.eps != nil {
		return o.eps
	}
	return cpu
}

// vae returns the decoder the pipeline runs: the device copy, else cpu.
func (o *onDevice) vae(cpu *models.VAE) ImageDecoder {
	if o.dec != nil {
		return o.dec
	}
	return cpu
}

// text returns the text encoder the pipeline runs: the device copy, else cpu.
func (o *onDevice) text(cpu *models.CLIPTextModel) TextEncoder {
	if o.enc != nil {
		return o.enc
	}
	return cpu
}

// toDevice wraps the CPU models with their CUDA types on d; parts without
// a GPU path stay on the CPU with a note. On error what was moved is
// freed again.
func (l *Loaded) toDevice(d *Device, unet *models.UNet, vae *models.VAE, clip *models.CLIPTextModel) error {
	if !d.OnGPU() {
		return nil
	}
	l.device = &onDevice{dev: d}
	if err := l.moveParts(d, unet, vae, clip); err != nil {
		l.closeDevice()
		return fmt.Errorf("moving the models to %s: %w", d, err)
	}
	return nil
}

// track records a device copy of the CPU model cpu.
func (o *onDevice) track(m deviceModel, cpu any) {
	o.copies = append(o.copies, m)
	o.weights = append(o.weights, cpu)
}

// note records a part that stays on the CPU.
func (l *Loaded) note(part string) {
	l.DeviceNotes = append(l.DeviceNotes, part+" on the CPU (no GPU path yet)")
}

// closeDevice frees every device copy (the Device itself stays open: its
// opener closes it).
func (l *Loaded) closeDevice() error {
	if l.device == nil {
		return nil
	}
	var errs []error
	for i := len(l.device.copies) - 1; i >= 0; i-- {
		errs = append(errs, l.device.copies[i].Close())
	}
	l.device = nil
	return errors.Join(errs...)
}

// OnGPU reports whether any part of the pipeline computes on a GPU.
func (l *Loaded) OnGPU() bool { return l.device != nil && len(l.device.copies) > 0 }

// SyncDevice re-uploads the weights of every device copy from its CPU
// model (after ApplyLoRAs patched the CPU tensors). Tensors the device
// never uploaded are skipped. It is a no-op on the CPU.
func (l *Loaded) SyncDevice() error {
	if l.device == nil {
		return nil
	}
	for i, m := range l.device.copies {
		if err := m.Sync(weightTensors(l.device.weights[i])); err != nil {
			return fmt.Errorf("re-uploading patched weights to %s: %w", l.device.dev, err)
		}
	}
	return nil
}

// UseLoRAs is ApplyLoRAs followed by SyncDevice: the adapters patch the
// shared CPU weights through the LoRA plugin, then the device copies are
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
	seen := map[uintptr]bool{}
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Pointer:
			if v.IsNil() || seen[v.Pointer()] {
				return
			}
			seen[v.Pointer()] = true
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
	o.eps = u
	_ = vae
	l.note("VAE decoder")
	c, err := models.NewCLIPCUDA(d.GPU, clip)
	if err != nil {
		return fmt.Errorf("clip text encoder: %w", err)
	}
	o.track(c, clip)
	o.enc = c
	return nil
}
