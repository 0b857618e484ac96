// device.go: the LoRA merge on weights that live on a CUDA device (device
// arenas, protocol minor 2). Each granted device tensor holds its original
// values (the host restores device weights from its own copy before the
// call) and is patched in place, op after op in adapter order, as Apply
// does on the CPU:
//
//   - plain LoRA (no Tucker, no DoRA): W += m·s·(up @ down) by one cuBLAS
//     GemmEx with beta 1, in the weight's dtype (F32, or F16 with the
//     factors rounded to F16), fp32 compute;
//   - LoHa (no Tucker): D1 = w1a @ w1b and D2 = w2a @ w2b in fp32 scratch
//     by cuBLAS, then W += m·s·(D1 ⊙ D2) (cuda/kernels/lora.cu);
//   - LoKr: the two small Kronecker factors are built on the CPU as Apply
//     builds them, then W += m·s·kron(W1, W2) without materialising it;
//   - full / norm differences and bias differences: W += m·D.
//
// Any other op (DoRA, Tucker LoRA/LoHa, IA3, OFT, GLoRA, inpaint-padded
// inputs) and any tensor that comes with its original as an input takes
// the exact fallback: the whole tensor is computed on the CPU by Apply
// (or applyFromOriginal) from the original values and uploaded in the
// weight's dtype. An original that comes as a device input of the same
// dtype is copied into the weight on the device (queued) and the weight
// then merged as above: restore + patch in one call, no host traffic
// (PatchDeviceBatch, device_batch.go, fuses both for a whole swap in one
// launch). The
// plugin keeps plain LoRA factors on the device between calls
// (DeviceFactors, staged in batches by device_stage.go, dropped with their
// file); other factors are uploaded per call. Nothing here waits for the
// device on the plain LoRA path; the SDK synchronises once before the
// reply. DeviceStats counts it all (budget in device_stage.go).
//
// It does not restore weights by itself, and does not support BF16 device
// weights.
package lora

import (
	"fmt"
	"sync"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

// loraBlock is the thread count of the lora.cu launches.
const loraBlock = 256

// deviceBLAS returns the plugin's cuBLAS handle on dev, creating it once.
func (p *Plugin) deviceBLAS(dev *cuda.Device) (*cuda.BLAS, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if bl, ok := p.blas[dev]; ok {
		return bl, nil
	}
	bl, err := dev.NewBLAS()
	if err != nil {
		return nil, fmt.Errorf("lora: cuBLAS on %s: %w", dev, err)
	}
	if p.blas == nil {
		p.blas = map[*cuda.Device]*cuda.BLAS{}
	}
	p.blas[dev] = bl
	return bl, nil
}

// DeviceFactors keeps adapter factors uploaded to devices between merges,
// so swapping back and forth between LoRAs uploads each factor once. Safe
// for concurrent use. The zero value is not usable; call NewDeviceFactors.
type DeviceFactors struct {
	mu         sync.Mutex
	m          map[factorKey]*cuda.Buffer // views into batches
	batches    map[*File][]*cuda.Buffer   // whole allocations, per file
	stagers    map[*cuda.Device]*cuda.Stager
	prefetched map[prefetchKey]bool
	tables     map[tableKey]*cuda.Buffer // lora_batch job tables (device_batch.go)
	bytes      int64
	stats      DeviceStats
}

// factorKey names one uploaded factor.
type factorKey struct {
	dev  *cuda.Device
	file *File
	mod  string
	part Part
	f16  bool
}

// NewDeviceFactors returns an empty cache.
func NewDeviceFactors() *DeviceFactors {
	return &DeviceFactors{m: map[factorKey]*cuda.Buffer{}, batches: map[*File][]*cuda.Buffer{},
		stagers: map[*cuda.Device]*cuda.Stager{}, prefetched: map[prefetchKey]bool{}, tables: map[tableKey]*cuda.Buffer{}}
}

// get returns the device copy of factor part of module mod of f (values x),
// staging it on first use (Prefetch usually did).
func (c *DeviceFactors) get(dev *cuda.Device, f *File, mod string, part Part, x []float32, f16 bool) (*cuda.Buffer, error) {
	k := factorKey{dev, f, mod, part, f16}
	c.mu.Lock()
	defer c.mu.Unlock()
	if b, ok := c.m[k]; ok {
		c.stats.FactorHits++
		return b, nil
	}
	if err := c.stage(dev, f, []pendingFactor{{key: k, x: x}}, f16); err != nil {
		return nil, err
	}
	return c.m[k], nil
}

// Bytes is the device memory the cache holds.
func (c *DeviceFactors) Bytes() int64 { c.mu.Lock(); defer c.mu.Unlock(); return c.bytes }

// DropFile frees the factors of f (an adapter file closed or reloaded).
func (c *DeviceFactors) DropFile(f *File) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.m {
		if k.file == f {
			delete(c.m, k)
		}
	}
	for _, b := range c.batches[f] {
		c.bytes -= int64(b.Size)
		b.Free() // cuMemFree waits for the queued merges reading it
	}
	delete(c.batches, f)
	clear(c.prefetched) // plans naming f must stage again
	// Job tables may point at f's factors.
	for k, t := range c.tables {
		t.Free()
		delete(c.tables, k)
	}
}

// onDevice reports whether op o can run on the GPU path.
func (o *Op) onDevice() bool {
	if o.padIn > 0 {
		return false
	}
	if o.bias {
		return true
	}
	switch o.mod.Algo {
	case AlgoFull, AlgoNorm:
		return true
	case AlgoLoRA, AlgoLoHa:
		return !o.mod.Tucker && !o.mod.DoRA
	case AlgoLoKr:
		return !o.mod.DoRA
	}
	return false
}

// patchDevice merges the granted device tensor t in place; orig, when not
// nil, holds its original values (t's current values are then unspecified).
func (p *Plugin) patchDevice(plan *Plan, t, orig *sdk.Tensor) error {
	buf, err := t.MutableDeviceBuffer()
	if err != nil {
		return fmt.Errorf("lora: %w", err)
	}
	if orig == nil || orig.OnDevice() && orig.DType == t.DType && plan.onDevice(t.Name) {
		bl, err := p.deviceBLAS(buf.Device())
		if err != nil {
			return err
		}
		if t.DType == sdk.F32 || t.DType == sdk.F16 {
			if err := p.factors.Prefetch(buf.Device(), plan, t.DType); err != nil {
				return err
			}
		}
		if orig != nil { // restore + patch: copy the original in, merge on top
			ob, err := orig.DeviceBuffer()
			if err != nil {
				return err
			}
			if err := buf.CopyFromAsync(ob, t.Numel()*t.DType.Size()); err != nil {
				return fmt.Errorf("lora: restoring %q from its device original: %w", t.Name, err)
			}
			p.factors.count(func(s *DeviceStats) { s.DeviceRestores++ })
		}
		return plan.ApplyDevice(bl, t.Name, buf, t.DType, p.factors)
	}
	if t.DType != sdk.F32 && t.DType != sdk.F16 {
		return fmt.Errorf("lora: device tensor %q is %s; the GPU merge takes F32 or F16 weights", t.Name, t.DType)
	}
	p.factors.count(func(s *DeviceStats) { s.Merges++; s.HostRoundTrips++; s.BlockingCalls += 2 })
	w := make([]float32, t.Numel()) // [numel]
	if orig.OnDevice() {
		ob, err := orig.DeviceBuffer()
		if err != nil {
			return err
		}
		if err := downloadAs(ob, orig.DType, w); err != nil {
			return fmt.Errorf("lora: reading the original of %q: %w", t.Name, err)
		}
		if err := plan.Apply(t.Name, w, w); err != nil {
			return err
		}
	} else if err := applyFromOriginal(plan, t.Name, orig, w); err != nil {
		return err
	}
	if err := uploadAs(buf, t.DType, w); err != nil {
		return fmt.Errorf("lora: writing %q: %w", t.Name, err)
	}
	return nil
}

// ApplyDevice merges key in place into w, its device tensor of dtype dt
// (F32 or F16) holding the original values, as Apply does on the CPU: on
// the GPU when every op has a GPU path, else exactly by Apply on a host
// copy (downloaded, merged, uploaded in dt). Work is queued on w's device
// stream; a following download or Synchronize waits for it. With cache
// the LoRA factors stay on the device for later merges; nil uploads them
// for this call only.
func (p *Plan) ApplyDevice(bl *cuda.BLAS, key string, w *cuda.Buffer, dt sdk.DType, cache *DeviceFactors) error {
	tg, ok := p.targets[key]
	if !ok {
		return fmt.Errorf("lora: %q is not touched by this plan", key)
	}
	if dt != sdk.F32 && dt != sdk.F16 {
		return fmt.Errorf("lora: device tensor %q is %s; the GPU merge takes F32 or F16 weights", key, dt)
	}
	n := numel(tg.Shape)
	if w.Size < n*dt.Size() {
		return fmt.Errorf("lora: device tensor %q: %d bytes for shape %v %s", key, w.Size, tg.Shape, dt)
	}
	gpu := true
	for i := range tg.Ops {
		gpu = gpu && tg.Ops[i].onDevice()
	}
	if gpu {
		cache.count(func(s *DeviceStats) { s.Merges++ })
		for i := range tg.Ops {
			if err := tg.Ops[i].applyDevice(bl, tg.Shape, w, dt, cache); err != nil {
				return fmt.Errorf("lora: %s on the GPU: %w", key, err)
			}
		}
		return nil
	}
	cache.count(func(s *DeviceStats) { s.Merges++; s.HostRoundTrips++; s.BlockingCalls += 2 })
	h := make([]float32, n) // [numel]
	if err := downloadAs(w, dt, h); err != nil {
		return fmt.Errorf("lora: reading %q: %w", key, err)
	}
	if err := p.Apply(key, h, h); err != nil {
		return err
	}
	if err := uploadAs(w, dt, h); err != nil {
		return fmt.Errorf("lora: writing %q: %w", key, err)
	}
	return nil
}

// downloadAs reads a device tensor of dtype dt (F32 or F16) into w.
func downloadAs(b *cuda.Buffer, dt sdk.DType, w []float32) error {
	switch dt {
	case sdk.F32:
		return b.DownloadFloat32(w)
	case sdk.F16:
		h := make([]uint16, len(w))
		if err := b.DownloadUint16(h); err != nil {
			return err
		}
		safetensors.F16ToF32(w, h)
		return nil
	}
	return fmt.Errorf("device tensor dtype %s (want F32 or F16)", dt)
}

// uploadAs writes w into a device tensor of dtype dt (F32, or F16 rounded
// to nearest even).
func uploadAs(b *cuda.Buffer, dt sdk.DType, w []float32) error {
	switch dt {
	case sdk.F32:
		return b.UploadFloat32(w)
	case sdk.F16:
		return b.UploadUint16(toF16(w))
	}
	return fmt.Errorf("device tensor dtype %s (want F32 or F16)", dt)
}

func toF16(w []float32) []uint16 {
	h := make([]uint16, len(w))
	for i, v := range w {
		h[i] = safetensors.F32ToF16(v)
	}
	return h
}

// deviceScratch holds the device buffers of one op, freed together.
type deviceScratch struct {
	dev  *cuda.Device
	bufs []*cuda.Buffer
}

// f32 uploads x as an fp32 device buffer.
func (s *deviceScratch) f32(x []float32) (*cuda.Buffer, error) {
	b, err := s.alloc(4 * len(x))
	if err != nil {
		return nil, err
	}
	return b, b.UploadFloat32(x)
}

// f16 uploads x rounded to fp16.
func (s *deviceScratch) f16(x []float32) (*cuda.Buffer, error) {
	b, err := s.alloc(2 * len(x))
	if err != nil {
		return nil, err
	}
	return b, b.UploadUint16(toF16(x))
}

func (s *deviceScratch) alloc(n int) (*cuda.Buffer, error) {
	b, err := s.dev.Alloc(max(n, 4))
	if err != nil {
		return nil, err
	}
	s.bufs = append(s.bufs, b)
	return b, nil
}

// free releases the scratch (cuMemFree waits for the queued work using it).
func (s *deviceScratch) free() {
	for _, b := range s.bufs {
		b.Free()
	}
	s.bufs = nil
}

// launch runs lora.cu kernel name+suffix over n elements.
func launch(dev *cuda.Device, name string, dt sdk.DType, n int, args ...any) error {
	suffix := "_f32"
	if dt == sdk.F16 {
		suffix = "_f16"
	}
	f, err := dev.Kernel("lora.cu", name+suffix)
	if err != nil {
		return err
	}
	blocks := min(max((n+loraBlock-1)/loraBlock, 1), 1<<20)
	return f.Launch(cuda.Dim3{X: uint32(blocks)}, cuda.Dim3{X: loraBlock}, 0, args...)
}

// applyDevice runs op o (onDevice) on the device weight w of shape shape
// and dtype dt, in place.
func (o *Op) applyDevice(bl *cuda.BLAS, shape []int, w *cuda.Buffer, dt sdk.DType, cache *DeviceFactors) error {
	fs, err := o.file.load(o.mod)
	if err != nil {
		return err
	}
	dev := w.Device()
	sc := &deviceScratch{dev: dev}
	defer func() {
		if n := len(sc.bufs); n > 0 { // each scratch upload and free waits for the stream
			cache.count(func(s *DeviceStats) { s.BlockingCalls += 2 * n })
		}
		sc.free()
	}()
	n := numel(shape)
	axpy := func(a float32, src []float32) error {
		if src == nil {
			return nil
		}
		src = src[:min(len(src), n)] // as apply: a shorter source covers a prefix
		d, err := sc.f32(src)
		if err != nil {
			return err
		}
		cache.count(func(s *DeviceStats) { s.Kernels++ })
		return launch(dev, "lora_axpy", dt, len(src), w, d, a, int64(len(src)))
	}
	if o.bias {
		return axpy(float32(o.Strength), factor(fs, PartDiffB, PartBNorm))
	}
	out := shape[0]
	in := n / out
	alpha := float32(o.Strength * o.Scale)
	switch o.mod.Algo {
	case AlgoFull, AlgoNorm:
		return axpy(float32(o.Strength), factor(fs, PartDiff, PartWNorm))
	case AlgoLoRA:
		// W += m·s·(up @ down)      [out, r] @ [r, in*kh*kw], beta 1
		up, down := fs[PartUp], fs[PartDown]
		r := down.Shape[0]
		f16, typ := dt == sdk.F16, cuda.R32F
		if f16 {
			typ = cuda.R16F
		}
		factor := func(part Part, x []float32) (*cuda.Buffer, error) {
			if cache != nil {
				return cache.get(dev, o.file, o.mod.Name, part, x, f16)
			}
			if f16 {
				return sc.f16(x)
			}
			return sc.f32(x)
		}
		ub, err := factor(PartUp, up.Data)
		if err != nil {
			return err
		}
		db, err := factor(PartDown, down.Data)
		if err != nil {
			return err
		}
		cache.count(func(s *DeviceStats) { s.Gemms++ })
		return bl.GemmEx(false, false, out, in, r, alpha, ub, r, db, in, 1, w, in, typ, typ)
	case AlgoLoHa:
		// D1 = w1a @ w1b, D2 = w2a @ w2b (fp32), W += m·s·(D1 ⊙ D2)
		var d [2]*cuda.Buffer
		for i, pr := range [2][2]Part{{PartHadaW1A, PartHadaW1B}, {PartHadaW2A, PartHadaW2B}} {
			a, b := fs[pr[0]], fs[pr[1]]
			r := b.Shape[0]
			ab, err := sc.f32(a.Data) // [out, r]
			if err != nil {
				return err
			}
			bb, err := sc.f32(b.Data) // [r, in*kh*kw]
			if err != nil {
				return err
			}
			if d[i], err = sc.alloc(4 * n); err != nil { // [out, in*kh*kw] fp32
				return err
			}
			if err := bl.GemmEx(false, false, out, in, r, 1, ab, r, bb, in, 0, d[i], in, cuda.R32F, cuda.R32F); err != nil {
				return err
			}
		}
		cache.count(func(s *DeviceStats) { s.Gemms += 2; s.Kernels++ })
		return launch(dev, "lora_hadamard", dt, n, w, d[0], d[1], alpha, int64(n))
	case AlgoLoKr:
		// W [a*b, c*n2] += m·s·kron(W1 [a, c], W2 [b, n2])
		w1, a, c := lokrW1(fs)
		w2, b, n2 := lokrW2(fs, o.mod.Tucker)
		if a*b != out || c*n2 != in {
			return fmt.Errorf("lokr factors [%d, %d] x [%d, %d] do not make a [%d, %d] weight", a, c, b, n2, out, in)
		}
		b1, err := sc.f32(w1)
		if err != nil {
			return err
		}
		b2, err := sc.f32(w2)
		if err != nil {
			return err
		}
		cache.count(func(s *DeviceStats) { s.Kernels++ })
		return launch(dev, "lora_kron", dt, n, w, b1, b2, alpha, a, c, b, n2)
	}
	return fmt.Errorf("%w: module %q: %s has no GPU path", ErrUnsupported, o.mod.Name, o.mod.Algo)
}

// onDevice reports whether every op on key has a GPU path.
func (p *Plan) onDevice(key string) bool {
	tg, ok := p.targets[key]
	if !ok {
		return false
	}
	for i := range tg.Ops {
		if !tg.Ops[i].onDevice() {
			return false
		}
	}
	return true
}
