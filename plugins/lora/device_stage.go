// device_stage.go: the LoRA factors' side of a swap on the GPU. The
// factors of every plain LoRA module a plan touches are made resident
// before the first weight is merged: the ones not cached yet are packed,
// per adapter file, into one device allocation and uploaded as one packed
// buffer through the pinned stager (cuda.Stager: async copies in 4 MiB
// chunks, no stream sync; it waits on a slot's event only once more than
// its 12 MiB ring is in flight), so a swap to
// an adapter seen before uploads nothing and a new one costs one
// cuMemAlloc and a few pinned chunks per file. DeviceStats counts what the
// merges queued and every call that waits for the device, for the
// plugin's log line and for tests (counts, not times).
//
// Per-swap budget on the plugin side (192 plain rank-32 modules, cached):
// one tensor at a time, 192 GemmEx (beta 1) queued (plus 192 device
// copies when originals come as inputs); batched (PatchDeviceBatch,
// device_batch.go), 1 lora_batch launch. Either way 0 uploads and 0
// blocking calls here (such a swap captures into a CUDA graph), then the
// SDK's one stream sync before the reply (plugins/sdk/README.md). The
// host side's budget is in host/plugin_patch_device_orig.go.
//
// It does not free factors of files still open (DropFile does), and it
// prefetches a whole plan in the dtype of the first device tensor merged
// (a plan whose device weights mix F32 and F16 uploads the others per
// factor, still staged).
package lora

import (
	"encoding/binary"
	"fmt"
	"math"
	"sort"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

// factorAlign aligns factors packed into one allocation.
const factorAlign = 256

// DeviceStats counts the device work of the merges since the cache was
// made (cumulative; subtract two snapshots for one swap).
type DeviceStats struct {
	Merges          int   // device tensors merged
	Batched         int   // of which by a lora_batch launch (device_batch.go)
	TableUploads    int   // lora_batch job tables staged
	TableHits       int   // lora_batch job tables found resident
	Gemms           int   // cuBLAS GemmEx calls queued
	Kernels         int   // lora.cu launches queued
	DeviceRestores  int   // weights restored from a device original input (queued copy)
	FactorHits      int   // factors found resident
	FactorUploads   int   // factors uploaded (staged)
	FactorBytes     int64 // bytes of those uploads
	Batches         int   // staged batches (one allocation each)
	HostRoundTrips  int   // tensors merged on the CPU (download, Apply, upload)
	BlockingCalls   int   // calls here that wait for the stream (sync copies, scratch frees)
	ResidentBytes   int64 // device bytes of cached factors now
	ResidentFactors int   // cached factors now
}

// String is the plugin's log line for a swap.
func (s DeviceStats) String() string {
	return fmt.Sprintf("%d device tensors merged (%d in lora_batch launches): %d GEMMs + %d kernels queued, %d restored on the device; factors %d resident hits, %d uploaded (%d KB in %d staged batches); job tables %d staged, %d resident hits; %d CPU round trips; %d blocking calls; cache %d factors, %d MB",
		s.Merges, s.Batched, s.Gemms, s.Kernels, s.DeviceRestores, s.FactorHits, s.FactorUploads, s.FactorBytes>>10, s.Batches, s.TableUploads, s.TableHits, s.HostRoundTrips, s.BlockingCalls, s.ResidentFactors, s.ResidentBytes>>20)
}

// Sub returns s - o for the counters (the resident figures stay s's).
func (s DeviceStats) Sub(o DeviceStats) DeviceStats {
	d := s
	d.Merges -= o.Merges
	d.Batched -= o.Batched
	d.TableUploads -= o.TableUploads
	d.TableHits -= o.TableHits
	d.Gemms -= o.Gemms
	d.Kernels -= o.Kernels
	d.DeviceRestores -= o.DeviceRestores
	d.FactorHits -= o.FactorHits
	d.FactorUploads -= o.FactorUploads
	d.FactorBytes -= o.FactorBytes
	d.Batches -= o.Batches
	d.HostRoundTrips -= o.HostRoundTrips
	d.BlockingCalls -= o.BlockingCalls
	return d
}

// Stats returns the counters so far.
func (c *DeviceFactors) Stats() DeviceStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.ResidentBytes, s.ResidentFactors = c.bytes, len(c.m)
	return s
}

// count applies fn to the counters.
func (c *DeviceFactors) count(fn func(s *DeviceStats)) {
	if c == nil {
		return
	}
	c.mu.Lock()
	fn(&c.stats)
	c.mu.Unlock()
}

// pendingFactor is one factor to upload in a batch.
type pendingFactor struct {
	key factorKey
	x   []float32
	off int
}

// stage uploads the factors ps of one file into one new allocation (c.mu
// held), through the device's stager, and caches views of it.
func (c *DeviceFactors) stage(dev *cuda.Device, f *File, ps []pendingFactor, f16 bool) error {
	size := 2
	if !f16 {
		size = 4
	}
	total := 0
	for i := range ps {
		ps[i].off = total
		total += (len(ps[i].x)*size + factorAlign - 1) / factorAlign * factorAlign
	}
	if total == 0 {
		return nil
	}
	st, err := c.stager(dev)
	if err != nil {
		return err
	}
	buf, err := dev.Alloc(total)
	if err != nil {
		return fmt.Errorf("lora: %d bytes of factors of %s on %s: %w", total, f.Path, dev, err)
	}
	// Pack the batch on the host, then one staged upload: the stager
	// waits for a pinned slot only every few MiB, not per factor.
	packed := make([]byte, total)
	for _, p := range ps {
		dst := packed[p.off : p.off+len(p.x)*size]
		if f16 {
			for i, v := range p.x {
				binary.LittleEndian.PutUint16(dst[2*i:], safetensors.F32ToF16(v))
			}
		} else {
			for i, v := range p.x {
				binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
			}
		}
	}
	if err := st.Upload(buf, 0, packed); err != nil {
		buf.Free()
		return fmt.Errorf("lora: staging %d factors of %s: %w", len(ps), f.Path, err)
	}
	for _, p := range ps {
		v, _ := buf.Slice(p.off, len(p.x)*size)
		c.m[p.key] = v
		c.stats.FactorUploads++
		c.stats.FactorBytes += int64(len(p.x) * size)
	}
	c.batches[f] = append(c.batches[f], buf)
	c.bytes += int64(total)
	c.stats.Batches++
	return nil
}

// stager returns dev's pinned stager, made on first use (c.mu held).
func (c *DeviceFactors) stager(dev *cuda.Device) (*cuda.Stager, error) {
	if st, ok := c.stagers[dev]; ok {
		return st, nil
	}
	st, err := dev.NewStager(0, 0)
	if err != nil {
		return nil, fmt.Errorf("lora: pinned stager on %s: %w", dev, err)
	}
	c.stagers[dev] = st
	return st, nil
}

// Prefetch makes the factors of every plain LoRA op of plan resident on
// dev in dtype dt (F16 factors for F16 weights), in one staged batch per
// file. A plan already prefetched in dt on dev returns at once.
func (c *DeviceFactors) Prefetch(dev *cuda.Device, plan *Plan, dt sdk.DType) error {
	f16 := dt == sdk.F16
	pk := prefetchKey{dev, plan, f16}
	c.mu.Lock()
	done := c.prefetched[pk]
	c.mu.Unlock()
	if done {
		return nil
	}
	byFile := map[*File][]pendingFactor{}
	var files []*File
	keys := make([]string, 0, len(plan.targets))
	for k := range plan.targets {
		keys = append(keys, k)
	}
	sort.Strings(keys) // a deterministic layout
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[factorKey]bool{}
	for _, k := range keys {
		for i := range plan.targets[k].Ops {
			o := &plan.targets[k].Ops[i]
			if o.bias || o.mod.Algo != AlgoLoRA || !o.onDevice() {
				continue
			}
			fs, err := o.file.load(o.mod)
			if err != nil {
				return err
			}
			for _, part := range []Part{PartUp, PartDown} {
				fk := factorKey{dev, o.file, o.mod.Name, part, f16}
				if seen[fk] {
					continue
				}
				seen[fk] = true
				if _, ok := c.m[fk]; ok {
					continue
				}
				if byFile[o.file] == nil {
					files = append(files, o.file)
				}
				byFile[o.file] = append(byFile[o.file], pendingFactor{key: fk, x: fs[part].Data})
			}
		}
	}
	before := c.stats
	for _, f := range files {
		if err := c.stage(dev, f, byFile[f], f16); err != nil {
			return err
		}
	}
	c.prefetched[pk] = true
	now := c.stats
	now.ResidentBytes, now.ResidentFactors = c.bytes, len(c.m)
	d := now.Sub(before)
	deviceLog().Info("LoRA factors on the device", "device", dev.String(), "targets", len(plan.targets),
		"staged_factors", d.FactorUploads, "staged_kb", d.FactorBytes>>10, "batches", d.Batches,
		"resident_factors", now.ResidentFactors, "resident_mb", now.ResidentBytes>>20, "since_start", now.String())
	return nil
}

// deviceLog is the plugin's logger for the device accounting (hclog JSON
// on stderr, re-emitted by the host).
var deviceLog = sync.OnceValue(func() hclog.Logger { return sdk.NewLogger("lora") })

// prefetchKey names one Prefetch done.
type prefetchKey struct {
	dev  *cuda.Device
	plan *Plan
	f16  bool
}
