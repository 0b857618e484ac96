// controlnet_buffers.go: the shared memory the ControlNet adapter hands to
// the plugin. Inputs (x rows, context rows, one hint per net) live in
// arenas the plugin maps read-only; the 13 residual buffers live in one
// plugin-writable arena per (batch, latent size), allocated once and reused
// every step. Row ranges of a buffer are granted as refs with an offset, so
// the cond half and the uncond half can be written by separate calls. With
// a GPU (ControlNetOptions.GPU) the residual buffers are one device
// allocation shared as a device arena, in the GPU's dtype, so the plugin
// writes them on the device and the U-Net reads them there.
//
// It does not call the plugin or decide scales (controlnet.go).
package host

import (
	"errors"
	"fmt"
	"slices"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// residualShapes lists the shapes [n, C_i, H_i, W_i] of the residuals of a
// U-Net of cfg on a latent of h x w, in models.ResidualNames order.
// Downsampling is 3x3 stride 2 pad 1, so each level is ceil(prev / 2).
func residualShapes(cfg models.UNetConfig, n, h, w int) [][]int {
	mc := cfg.ModelChannels
	out := [][]int{{n, mc, h, w}} // input_blocks.0: conv_in (+ hint)
	for l, m := range cfg.ChannelMult {
		for range cfg.NumResBlocks {
			out = append(out, []int{n, mc * m, h, w})
		}
		if l < len(cfg.ChannelMult)-1 {
			h, w = (h+1)/2, (w+1)/2
			out = append(out, []int{n, mc * m, h, w}) // Downsample
		}
	}
	mid := mc * cfg.ChannelMult[len(cfg.ChannelMult)-1]
	return append(out, []int{n, mid, h, w}) // middle_block_out
}

// residualBuffers is one set of named residual buffers in a
// plugin-writable arena.
type residualBuffers struct {
	arena  *Arena
	names  []string
	shapes [][]int     // [n, C, H, W] each
	data   [][]float32 // in the arena (host buffers)

	// Device buffers: one allocation (arena is its device arena), views
	// gpu[i] into it, of dtype dt; data is nil.
	dev *cuda.Buffer
	gpu []*nn.GPUTensor
	dt  sdk.DType
}

// newDeviceResidualBuffers is newResidualBuffers in device memory of g, in
// g's dtype.
func newDeviceResidualBuffers(g *nn.GPU, cfg models.UNetConfig, n, h, w int) (*residualBuffers, error) {
	names := models.ResidualNames(cfg)
	shapes := residualShapes(cfg, n, h, w)
	if len(names) != len(shapes) {
		return nil, fmt.Errorf("controlnet: %d residual names for %d shapes", len(names), len(shapes))
	}
	es := g.DType.Size()
	const align = 256
	size, offs := 0, make([]int, len(shapes))
	for i, s := range shapes {
		offs[i] = size
		size += (es*shapeNumel(s) + align - 1) &^ (align - 1)
	}
	buf, err := g.Dev.Alloc(size)
	if err != nil {
		return nil, fmt.Errorf("controlnet: device residual buffers: %w", err)
	}
	a, err := NewDeviceArena("controlnet-residuals", buf, true)
	if err != nil {
		buf.Free()
		return nil, fmt.Errorf("controlnet: device residual buffers: %w", err)
	}
	b := &residualBuffers{arena: a, names: names, shapes: shapes, dev: buf, dt: sdk.F32}
	if g.DType == nn.GPUF16 {
		b.dt = sdk.F16
	}
	for i, s := range shapes {
		v, err := buf.Slice(offs[i], es*shapeNumel(s))
		if err != nil {
			b.close()
			return nil, err
		}
		b.gpu = append(b.gpu, &nn.GPUTensor{Shape: slices.Clone(s), DType: g.DType, Buf: v}) // [n, C, H, W]
	}
	return b, nil
}

func newResidualBuffers(cfg models.UNetConfig, n, h, w int) (*residualBuffers, error) {
	names := models.ResidualNames(cfg)
	shapes := residualShapes(cfg, n, h, w)
	if len(names) != len(shapes) {
		return nil, fmt.Errorf("controlnet: %d residual names for %d shapes", len(names), len(shapes))
	}
	size := 0
	for _, s := range shapes {
		size += 4*shapeNumel(s) + arenaAlign
	}
	a, err := NewArena("controlnet-residuals", size, true)
	if err != nil {
		return nil, fmt.Errorf("controlnet: residual buffers: %w", err)
	}
	b := &residualBuffers{arena: a, names: names, shapes: shapes}
	for _, s := range shapes {
		b.data = append(b.data, a.AllocFloat32(shapeNumel(s)))
	}
	return b, nil
}

func (b *residualBuffers) fits(n, h, w int) bool {
	return b.shapes[0][0] == n && b.shapes[0][2] == h && b.shapes[0][3] == w
}

// rowRefs grants rows [r0, r1) of every buffer writable.
func (b *residualBuffers) rowRefs(r0, r1 int) ([]*sdk.Tensor, error) {
	out := make([]*sdk.Tensor, len(b.names))
	for i, name := range b.names {
		s := b.shapes[i]
		per := shapeNumel(s[1:])
		if b.dev != nil {
			es := b.dt.Size()
			v, err := b.gpu[i].Buf.Slice(r0*per*es, (r1-r0)*per*es)
			if err != nil {
				return nil, err
			}
			ref, err := DeviceRefOf(name, v, b.dt, []int{r1 - r0, s[1], s[2], s[3]}, true)
			if err != nil {
				return nil, err
			}
			out[i] = sdk.Ref(ref)
			continue
		}
		ref, err := RefOf(name, b.data[i][r0*per:r1*per], []int{r1 - r0, s[1], s[2], s[3]}, true)
		if err != nil {
			return nil, err
		}
		out[i] = sdk.Ref(ref)
	}
	return out, nil
}

// zeroRows clears rows [r0, r1) of every buffer.
func (b *residualBuffers) zeroRows(r0, r1 int) error {
	for i, s := range b.shapes {
		per := shapeNumel(s[1:])
		if b.dev != nil {
			es := b.dt.Size()
			v, err := b.gpu[i].Buf.Slice(r0*per*es, (r1-r0)*per*es)
			if err == nil {
				err = v.Zero()
			}
			if err != nil {
				return fmt.Errorf("controlnet: clearing residual %q: %w", b.names[i], err)
			}
			continue
		}
		clear(b.data[i][r0*per : r1*per])
	}
	return nil
}

// residuals wraps the buffers as U-Net residuals: no copy for host
// buffers; device buffers are downloaded (for a U-Net on the CPU, or one
// that takes CPU residuals; gpuResiduals avoids the copy).
func (b *residualBuffers) residuals() (models.Residuals, error) {
	r := make(models.Residuals, len(b.names))
	for i, name := range b.names {
		if b.dev != nil {
			t, err := b.gpu[i].Download() // [n, C, H, W]
			if err != nil {
				return nil, fmt.Errorf("controlnet: downloading residual %q: %w", name, err)
			}
			r[name] = t
			continue
		}
		r[name] = nn.From(b.data[i], slices.Clone(b.shapes[i])...) // [n, C, H, W]
	}
	return r, nil
}

// gpuResiduals are the device buffers as U-Net residuals (views, no copy).
func (b *residualBuffers) gpuResiduals() models.GPUResiduals {
	r := make(models.GPUResiduals, len(b.names))
	for i, name := range b.names {
		r[name] = b.gpu[i]
	}
	return r
}

// close unregisters the arena and frees device buffers (the plugin must
// have unmapped them: ControlNetSource.Close).
func (b *residualBuffers) close() error {
	err := b.arena.Close()
	if b.dev != nil {
		if ferr := b.dev.Free(); err == nil {
			err = ferr
		}
		b.dev = nil
	}
	return err
}

// putInputs copies x [N, C, H, W] and the context c [N, L, D] into *cur
// (the inputs of a residual plugin's call), first replacing it with a fresh
// arena with room to spare when they do not fit; drop frees the old one
// (and has the plugin unmap it where that applies). A nil c (a context on
// the device) puts x alone.
func putInputs(cur **inputArena, x, c *nn.Tensor, drop func()) ([]*sdk.Tensor, error) {
	names := []string{"x", "context"}
	ts := []*nn.Tensor{x, c}
	floats := len(x.Data) + 2*arenaAlign
	if c == nil {
		names, ts = names[:1], ts[:1]
	} else {
		floats += len(c.Data)
	}
	if *cur != nil {
		refs, ok, err := (*cur).put(names, ts)
		if err != nil || ok {
			return refs, err
		}
		drop()
		*cur = nil
	}
	in, err := newInputArena(2 * floats)
	if err != nil {
		return nil, err
	}
	*cur = in
	refs, ok, err := in.put(names, ts)
	if err == nil && !ok {
		err = errors.New("residual inputs do not fit a fresh arena")
	}
	return refs, err
}

// inputArena is a read-only (for the plugin) arena the host refills with
// the x and context rows of every call.
type inputArena struct {
	arena *Arena
	mem   []float32
}

func newInputArena(floats int) (*inputArena, error) {
	a, err := NewArena("controlnet-inputs", 4*floats+4*arenaAlign, false)
	if err != nil {
		return nil, fmt.Errorf("controlnet: input arena: %w", err)
	}
	return &inputArena{arena: a, mem: a.AllocFloat32(floats)}, nil
}

// put copies the tensors into the arena (each 64-byte aligned) and returns
// their read-only refs under names; ok is false when they do not fit.
func (in *inputArena) put(names []string, ts []*nn.Tensor) (refs []*sdk.Tensor, ok bool, err error) {
	off := 0
	for i, t := range ts {
		n := len(t.Data)
		if off+n > len(in.mem) {
			return nil, false, nil
		}
		dst := in.mem[off : off+n]
		copy(dst, t.Data)
		ref, err := RefOf(names[i], dst, t.Shape, false)
		if err != nil {
			return nil, false, err
		}
		refs = append(refs, sdk.Ref(ref))
		off = (off + n + arenaAlign/4 - 1) &^ (arenaAlign/4 - 1)
	}
	return refs, true, nil
}

func (in *inputArena) close() error { return in.arena.Close() }
