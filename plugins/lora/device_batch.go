// device_batch.go: a whole swap's plain LoRA merges in one kernel launch.
// PatchDeviceBatch takes every device tensor of one PatchWeights call;
// each one whose only op is a plain LoRA (no Tucker, no DoRA) becomes a
// job of lora_batch (cuda/kernels/lora.cu): W = W_orig + m·s·(up @ down)
// when its original comes as a device input of the same dtype (restore and
// patch fused: W is read never, written once), else W += m·s·(up @ down).
// The job table (80 bytes a job) is uploaded through the pinned stager the
// first time a (plan, tensors) combination is seen and kept on the device,
// so a swap back to an adapter seen before is exactly one launch: no
// upload, no allocation, nothing that waits for the device.
//
// Budget of a cached swap of 192 modules: 1 launch, |W_orig| read +
// |W| written + the factors (~400 MB for ~200 MB of F16 weights, against
// ~800 MB for copy + GemmEx), 0 bytes over PCIe, 0 syncs here, the SDK's 1
// before the reply. The other tensors (several ops, other algorithms, a
// host original) take patchDevice one by one, after the batch on the
// same stream.
//
// It does not use tensor cores (fp32 FMA tiles: a rank-32 swap is
// memory-bound), and keeps at most maxBatchTables tables per device.
package lora

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// lora_batch's layout (lora.cu).
const (
	loraJobWords = 10
	loraTileRows = 32
	loraTileCols = 64
	loraBatchMax = 1 << 31 // tiles per launch (grid.x)
)

// maxBatchTables bounds the job tables kept on the device.
const maxBatchTables = 64

// batchJob is one module of a batch.
type batchJob struct {
	t          *sdk.Tensor
	w, orig    *cuda.Buffer
	out, in, r int
	alpha      float32
	op         *Op
}

// batchable returns the single plain LoRA op of key, or nil.
func (p *Plan) batchable(key string) *Op {
	tg, ok := p.targets[key]
	if !ok || len(tg.Ops) != 1 {
		return nil
	}
	o := &tg.Ops[0]
	if o.bias || o.mod.Algo != AlgoLoRA || !o.onDevice() {
		return nil
	}
	return o
}

// PatchDeviceBatch merges the device tensors ts in place, origs holding
// the original of some of them by name (device or host inputs), as
// patchDevice does one by one: plain LoRA ones in one lora_batch launch
// per dtype, the others through patchDevice. Work is queued on the
// tensors' device stream.
func (p *Plugin) PatchDeviceBatch(plan *Plan, ts []*sdk.Tensor, origs map[string]*sdk.Tensor) error {
	groups := map[sdk.DType][]batchJob{}
	var rest []*sdk.Tensor
	for _, t := range ts {
		o := plan.batchable(t.Name)
		in := origs[t.Name]
		if o == nil || (t.DType != sdk.F32 && t.DType != sdk.F16) || in != nil && (!in.OnDevice() || in.DType != t.DType) {
			rest = append(rest, t)
			continue
		}
		buf, err := t.MutableDeviceBuffer()
		if err != nil {
			return fmt.Errorf("lora: %w", err)
		}
		j := batchJob{t: t, w: buf, op: o}
		if in != nil {
			if j.orig, err = in.DeviceBuffer(); err != nil {
				return fmt.Errorf("lora: %w", err)
			}
		}
		groups[t.DType] = append(groups[t.DType], j)
	}
	for _, dt := range []sdk.DType{sdk.F32, sdk.F16} {
		if js := groups[dt]; len(js) > 0 {
			if err := p.launchBatch(plan, dt, js); err != nil {
				return err
			}
		}
	}
	for _, t := range rest {
		if err := p.patchDevice(plan, t, origs[t.Name]); err != nil {
			return err
		}
	}
	return nil
}

// launchBatch runs one lora_batch over js (all of dtype dt, one device).
func (p *Plugin) launchBatch(plan *Plan, dt sdk.DType, js []batchJob) error {
	dev := js[0].w.Device()
	c := p.factors
	if err := c.Prefetch(dev, plan, dt); err != nil {
		return err
	}
	f16 := dt == sdk.F16
	table := make([]byte, 0, len(js)*loraJobWords*8)
	word := func(v uint64) { table = binary.LittleEndian.AppendUint64(table, v) }
	var tiles int64
	restores := 0
	for i := range js {
		j := &js[i]
		if j.w.Device() != dev || j.orig != nil && j.orig.Device() != dev {
			return fmt.Errorf("lora: %q: one batch per device", j.t.Name)
		}
		tg := plan.targets[j.t.Name]
		n := numel(tg.Shape)
		j.out = tg.Shape[0]
		j.in = n / j.out
		if j.w.Size < n*dt.Size() || j.orig != nil && j.orig.Size < n*dt.Size() {
			return fmt.Errorf("lora: device tensor %q: fewer bytes than shape %v %s", j.t.Name, tg.Shape, dt)
		}
		fs, err := j.op.file.load(j.op.mod)
		if err != nil {
			return err
		}
		up, down := fs[PartUp], fs[PartDown]
		j.r = down.Shape[0]
		if len(up.Data) != j.out*j.r || len(down.Data) != j.r*j.in {
			return fmt.Errorf("lora: %q: factors [%d] and [%d] do not make a [%d, %d] rank-%d product", j.t.Name, len(up.Data), len(down.Data), j.out, j.in, j.r)
		}
		ub, err := c.get(dev, j.op.file, j.op.mod.Name, PartUp, up.Data, f16)
		if err != nil {
			return err
		}
		db, err := c.get(dev, j.op.file, j.op.mod.Name, PartDown, down.Data, f16)
		if err != nil {
			return err
		}
		var orig uint64
		if j.orig != nil {
			orig = j.orig.Ptr
			restores++
		}
		colTiles := int64((j.in + loraTileCols - 1) / loraTileCols)
		word(j.w.Ptr)
		word(orig)
		word(ub.Ptr)
		word(db.Ptr)
		word(uint64(j.out))
		word(uint64(j.in))
		word(uint64(j.r))
		word(uint64(math.Float32bits(float32(j.op.Strength * j.op.Scale))))
		word(uint64(tiles))
		word(uint64(colTiles))
		tiles += int64((j.out+loraTileRows-1)/loraTileRows) * colTiles
	}
	if tiles == 0 {
		return nil
	}
	if tiles > loraBatchMax {
		return fmt.Errorf("lora: a batch of %d tiles exceeds one launch", tiles)
	}
	tb, err := c.table(dev, table)
	if err != nil {
		return err
	}
	f, err := dev.Kernel("lora.cu", map[bool]string{false: "lora_batch_f32", true: "lora_batch_f16"}[f16])
	if err != nil {
		return fmt.Errorf("lora: %w", err)
	}
	if err := f.Launch(cuda.Dim3{X: uint32(tiles)}, cuda.Dim3{X: 256}, 0, tb, int32(len(js))); err != nil {
		return fmt.Errorf("lora: lora_batch over %d modules: %w", len(js), err)
	}
	c.count(func(s *DeviceStats) {
		s.Kernels++
		s.Merges += len(js)
		s.Batched += len(js)
		s.DeviceRestores += restores
	})
	return nil
}

// table returns a device copy of the job table b, staging it the first
// time these bytes are seen on dev.
func (c *DeviceFactors) table(dev *cuda.Device, b []byte) (*cuda.Buffer, error) {
	k := tableKey{dev, string(b)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.tables[k]; ok {
		c.stats.TableHits++
		return t, nil
	}
	if len(c.tables) >= maxBatchTables {
		for old, t := range c.tables { // the stream passed them: each swap ends with a sync
			t.Free()
			delete(c.tables, old)
		}
		c.stats.BlockingCalls++ // cuMemFree waits for the device
	}
	st, err := c.stager(dev)
	if err != nil {
		return nil, err
	}
	t, err := dev.Alloc(len(b))
	if err != nil {
		return nil, fmt.Errorf("lora: job table of %d bytes: %w", len(b), err)
	}
	if err := st.Upload(t, 0, b); err != nil {
		t.Free()
		return nil, fmt.Errorf("lora: staging a job table: %w", err)
	}
	c.tables[k] = t
	c.stats.TableUploads++
	return t, nil
}

// tableKey names one job table on one device.
type tableKey struct {
	dev   *cuda.Device
	bytes string
}
