// plugin_patch_device_orig.go: the originals of LoRA-patched device
// weights kept on the device, so a restore is a device-to-device copy
// queued on the stream instead of an upload from the host.
//
// Budget of one swap (restore + patch of the union of the old and new
// patch's weights; SD1.5 attention LoRA at rank 32: 192 modules, ~200 MB
// of F16 weights). Counts, checked on the stand-ins (the one-pass ones by
// the stand-in driver's own per-process counters:
// TestLoRADeviceSwapBudget); times are estimates from H100 bandwidth
// (3.35 TB/s), not measured on a GPU yet.
//
//   - Restore here, patch in the plugin (a weight's first patch, and
//     plugins that do not read originals), per swap:
//     host: 192 cuMemcpyDtoDAsync (2 x |W| = ~400 MB of device traffic,
//     0 bytes over PCIe, 0 syncs: the restores of a swap capture into one
//     CUDA graph), then 1 cuStreamSynchronize (SyncForPlugin) and the
//     PatchWeights RPC (plus the PlanPatch RPC: 2 RPCs);
//     plugin: 192 GemmEx with beta 1 (~400 MB), factors resident (0
//     uploads after an adapter's first swap), 0 syncs, then the SDK's 1
//     cuStreamSynchronize before the reply.
//     In all 384 queued operations, 2 stream syncs (one per process),
//     2 RPCs, ~800 MB (~0.25 ms of bandwidth); the ~384 launches (a few
//     microseconds each on the host) dominate: ~1.5-2.5 ms estimated.
//   - One pass (every later swap: plugin_patch.go sends DeviceWeight.Original
//     as inputs, the LoRA plugin's serve.go calls PatchDeviceBatch):
//     host: 0 restores for touched weights, 1 sync, 2 RPCs; plugin: 1
//     lora_batch launch reading W_orig and writing W (~400 MB), 0 uploads
//     (job table resident after the first swap), the SDK's 1 sync.
//     ~0.15 ms of bandwidth plus the RPCs: well under the 3 ms target.
//
// The first restore of a weight uploads the host's unpatched copy once
// into its original (pinned staging, async) and copies that into the
// weight; the host copy is never read again. Originals come from one
// device arena (cuda.Arena, 64 MiB blocks). When the cap is reached or the device is short of memory
// (cuMemGetInfo below the reserve), the weight falls back to the host
// restore of RestoreFromHost (a synchronous pageable upload per restore),
// and Stats says how many did.
//
// Each original's arena block is registered as a read-only device arena
// (Arenas, to Unmap from plugins before Close) and DeviceWeight.Original
// gives its ref, so a plugin can read the original itself and write
// W = W_orig + delta in one pass (plugins/lora/device_batch.go: one launch
// per swap; plugin_patch.go sends device originals as inputs, as it does
// file-backed ones).
//
// It does not evict originals (a weight that got one keeps it until
// Close).
package host

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"weak"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

// DefaultOriginalsReserve is the device memory DeviceOriginals leaves
// free: a new original is refused (host fallback) when cuMemGetInfo would
// report less than this afterwards.
const DefaultOriginalsReserve = 512 << 20

// DeviceOriginals holds device copies of the originals of patched device
// weights, on one device. Safe for concurrent use (restoreAll restores
// from several goroutines).
type DeviceOriginals struct {
	dev     *cuda.Device
	cap     int64 // bytes of originals at most (0: no cap but the reserve)
	reserve uint64

	mu     sync.Mutex
	arena  *cuda.Arena
	set    *DeviceArenaSet         // the arena's blocks, read-only for plugins
	byName map[string]*cuda.Buffer // the originals made so far
	stager *cuda.Stager
	bytes  int64
	stats  OriginalsStats
	closed bool
}

// OriginalsStats counts what the restores did.
type OriginalsStats struct {
	Originals     int   // weights with a device original
	OriginalBytes int64 // device bytes they hold (aligned as the arena gives them)
	DeviceCopies  int   // restores by device-to-device copy (queued, no sync)
	HostUploads   int   // restores uploaded from the host (fallback)
	HostBytes     int64 // bytes those uploads moved over PCIe
	StagedBytes   int64 // bytes staged once into originals
	Fallbacks     int   // weights refused an original (cap or free memory)
}

// String is a one-line account for logs.
func (s OriginalsStats) String() string {
	return fmt.Sprintf("%d device originals (%d MB); restores: %d device copies, %d host uploads (%d MB over PCIe); %d MB staged once; %d weights on the host fallback",
		s.Originals, s.OriginalBytes>>20, s.DeviceCopies, s.HostUploads, s.HostBytes>>20, s.StagedBytes>>20, s.Fallbacks)
}

// NewDeviceOriginals keeps originals on dev, at most capBytes of them (0:
// no cap), leaving reserve bytes of device memory free (0:
// DefaultOriginalsReserve).
func NewDeviceOriginals(dev *cuda.Device, capBytes int64, reserve uint64) *DeviceOriginals {
	if reserve == 0 {
		reserve = DefaultOriginalsReserve
	}
	return &DeviceOriginals{dev: dev, cap: capBytes, reserve: reserve, byName: map[string]*cuda.Buffer{},
		set: NewDeviceArenaSet("LoRA device originals", false)}
}

// Stats returns the counters so far.
func (o *DeviceOriginals) Stats() OriginalsStats {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.stats
	s.OriginalBytes = o.bytes
	return s
}

// Close frees every original (after the stream has passed their copies).
// The weights restored from them keep their values.
func (o *DeviceOriginals) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil
	}
	o.closed = true
	o.set.Close()
	clear(o.byName)
	var errs []error
	if o.stager != nil {
		errs = append(errs, o.stager.Close())
	}
	if o.arena != nil {
		errs = append(errs, o.arena.Close())
	}
	return errors.Join(errs...)
}

// Arenas lists the device arenas holding the originals (Unmap them from
// every plugin given an Original ref before Close).
func (o *DeviceOriginals) Arenas() []*Arena {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.set.Arenas()
}

// Original returns a read-only device ref to the original of weight name
// (shape, dtype), once its first restore made one; ok is false before
// that, on the host fallback and after Close.
func (o *DeviceOriginals) Original(name string, dtype sdk.DType, shape []int) (ref sdk.TensorRef, ok bool, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	b := o.byName[name]
	if b == nil {
		return sdk.TensorRef{}, false, nil
	}
	ref, err = DeviceRefOf(name, b, dtype, shape, false)
	return ref, err == nil, err
}

// room reports whether n more bytes of originals fit (o.mu held), counted
// as the arena hands them out (ArenaAlign multiples).
func (o *DeviceOriginals) room(n int) (bool, error) {
	if o.cap > 0 && o.bytes+alignUp(n) > o.cap {
		return false, nil
	}
	free, _, err := o.dev.MemInfo()
	if err != nil {
		return false, fmt.Errorf("device originals: %w", err)
	}
	return free >= o.reserve+uint64(n), nil
}

// Restore returns a Restore for buf (a weight of dtype F32 or F16 whose
// unpatched values are host, in float32) that copies from the weight's
// device original, made on the first call; without room for it, it
// restores from host like RestoreFromHost.
func (o *DeviceOriginals) Restore(name string, buf *cuda.Buffer, dtype sdk.DType, host []float32) func() error {
	var orig *cuda.Buffer
	var fallback func() error
	return func() error {
		o.mu.Lock()
		defer o.mu.Unlock()
		if o.closed {
			return fmt.Errorf("restoring %q: device originals are closed", name)
		}
		if fallback != nil {
			return o.hostRestore(fallback, len(host)*dtype.Size())
		}
		if orig == nil {
			b, err := o.make(name, dtype, host)
			if err != nil {
				return err
			}
			if b == nil {
				o.stats.Fallbacks++
				fallback = RestoreFromHost(buf, dtype, host)
				return o.hostRestore(fallback, len(host)*dtype.Size())
			}
			orig = b
		}
		if err := buf.CopyFromAsync(orig, orig.Size); err != nil {
			return fmt.Errorf("restoring %q from its device original: %w", name, err)
		}
		o.stats.DeviceCopies++
		return nil
	}
}

// hostRestore runs a host restore and counts it (o.mu held).
func (o *DeviceOriginals) hostRestore(restore func() error, n int) error {
	if err := restore(); err != nil {
		return err
	}
	o.stats.HostUploads++
	o.stats.HostBytes += int64(n)
	return nil
}

// make stages host (in dtype) into a new device original, or returns nil
// without room (o.mu held).
func (o *DeviceOriginals) make(name string, dtype sdk.DType, host []float32) (*cuda.Buffer, error) {
	n := len(host) * dtype.Size()
	if dtype != sdk.F32 && dtype != sdk.F16 {
		return nil, fmt.Errorf("device original of %q: dtype %s (want F32 or F16)", name, dtype)
	}
	ok, err := o.room(n)
	if err != nil || !ok {
		return nil, err
	}
	if o.arena == nil {
		block := int64(64 << 20)
		if o.cap > 0 {
			block = min(block, o.cap)
		}
		o.arena = o.dev.NewArena(cuda.ArenaOptions{Name: "LoRA device originals", BlockSize: block}) // room enforces the cap
	}
	if o.stager == nil {
		if o.stager, err = o.dev.NewStager(0, 0); err != nil {
			return nil, fmt.Errorf("device original of %q: %w", name, err)
		}
	}
	b, err := o.arena.Alloc(n)
	if err != nil {
		return nil, nil // the arena's cap or the driver said no: host fallback
	}
	if dtype == sdk.F32 {
		err = o.stager.UploadFloat32(b, 0, host)
	} else {
		half := make([]uint16, len(host))
		for i, v := range host {
			half[i] = safetensors.F32ToF16(v)
		}
		err = o.stager.UploadUint16(b, 0, half)
	}
	if err != nil {
		o.arena.Free(b)
		return nil, fmt.Errorf("staging the device original of %q: %w", name, err)
	}
	if err := o.set.Add(b); err != nil {
		return nil, fmt.Errorf("device original of %q: %w", name, err)
	}
	o.byName[name] = b
	o.bytes += alignUp(n)
	o.stats.Originals++
	o.stats.StagedBytes += int64(n)
	return b, nil
}

// alignUp is n rounded up to the arena's alignment.
func alignUp(n int) int64 {
	return (int64(n) + cuda.ArenaAlign - 1) / cuda.ArenaAlign * cuda.ArenaAlign
}

// originalsBySet keeps the DeviceOriginals DevicePatchTargets made for
// each arena set, until CloseDeviceOriginals, or until the set is garbage
// collected (for callers that forget): a cleanup then queues them in
// orphans, freed at the next DevicePatchTargets or CloseDeviceOriginals
// (never from the GC's goroutine, which could hit a graph capture).
var (
	originalsMu    sync.Mutex
	originalsBySet = map[weak.Pointer[DeviceArenaSet]]*DeviceOriginals{}
	orphans        []*DeviceOriginals
)

// closeOrphans frees the originals of collected sets.
func closeOrphans() {
	originalsMu.Lock()
	list := orphans
	orphans = nil
	originalsMu.Unlock()
	for _, o := range list {
		o.Close() // the device may be closed already: nothing left to free
	}
}

// originalsFor returns set's originals on dev, making them on first use.
func originalsFor(set *DeviceArenaSet, dev *cuda.Device) *DeviceOriginals {
	closeOrphans()
	originalsMu.Lock()
	defer originalsMu.Unlock()
	k := weak.Make(set)
	if o, ok := originalsBySet[k]; ok {
		return o
	}
	o := NewDeviceOriginals(dev, 0, 0)
	originalsBySet[k] = o
	runtime.AddCleanup(set, func(k weak.Pointer[DeviceArenaSet]) {
		originalsMu.Lock()
		defer originalsMu.Unlock()
		if o := originalsBySet[k]; o != nil {
			orphans = append(orphans, o)
		}
		delete(originalsBySet, k)
	}, k)
	return o
}

// DeviceOriginalsOf returns the originals DevicePatchTargets keeps for
// set, or nil.
func DeviceOriginalsOf(set *DeviceArenaSet) *DeviceOriginals {
	originalsMu.Lock()
	defer originalsMu.Unlock()
	return originalsBySet[weak.Make(set)]
}

// CloseDeviceOriginals frees the originals DevicePatchTargets kept for set
// (call it with set.Close, before closing the device).
func CloseDeviceOriginals(set *DeviceArenaSet) error {
	closeOrphans()
	originalsMu.Lock()
	k := weak.Make(set)
	o := originalsBySet[k]
	delete(originalsBySet, k)
	originalsMu.Unlock()
	if o == nil {
		return nil
	}
	return o.Close()
}
