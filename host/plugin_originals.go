// plugin_originals.go shares a mapped safetensors checkpoint with plugins as
// a read-only file arena, so a weight patcher can read each touched tensor's
// original stored bytes (F16, BF16 or F32) and write the patched float32
// weight in one pass, instead of the host first restoring the weight and the
// plugin then reading it back (plugin_patch.go, PlanPatchResponse.ReadsOriginals).
//
// The arena borrows the host's existing read-only mapping of the checkpoint
// (no second copy, no second mapping in the host) and sends plugins a fresh
// read-only descriptor of the same file, checked against the mapping by
// device and inode (/proc/self/maps), so host restores and plugin reads see
// the same bytes. A regular file cannot be sealed: if it shrinks, plugin
// reads fault; the LoRA plugin reads under debug.SetPanicOnFault and the
// host checks the file's size before every call that hands it out.
//
// It does not copy tensor bytes, does not write the file, and gives up
// (returns an error, callers keep the restore-then-patch path) wherever the
// mapping cannot be matched to the file.
package host

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
	"golang.org/x/sys/unix"
)

// CheckpointArena shares ckpt read-only with plugins. Close the arena before
// ckpt (it borrows ckpt's mapping).
func CheckpointArena(ckpt *safetensors.File) (*Arena, error) {
	base, err := mappingBase(ckpt)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(ckpt.Path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint arena: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("checkpoint arena: %s: %w", ckpt.Path, err)
	}
	if st.Size != ckpt.Size() {
		f.Close()
		return nil, fmt.Errorf("checkpoint arena: %s is %d bytes, %d when mapped", ckpt.Path, st.Size, ckpt.Size())
	}
	dev, ino, err := mappedFileID(uintptr(base))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("checkpoint arena: %s: %w", ckpt.Path, err)
	}
	if dev != uint64(st.Dev) || ino != st.Ino {
		f.Close()
		return nil, fmt.Errorf("checkpoint arena: %s was replaced after it was mapped", ckpt.Path)
	}
	mem := unsafe.Slice((*byte)(base), int(ckpt.Size()))
	id := nextArenaID.Add(1)
	a := &Arena{ID: id, Name: "checkpoint", f: f, mem: mem, used: len(mem), borrowed: true}
	arenaMu.Lock()
	arenaByID[id] = a
	arenaMu.Unlock()
	return a, nil
}

// mappingBase finds the start of ckpt's mapping from any non-empty
// tensor view (Data aliases the mapping at DataStart+Begin).
func mappingBase(ckpt *safetensors.File) (unsafe.Pointer, error) {
	for _, info := range ckpt.Tensors {
		if info.End <= info.Begin {
			continue
		}
		t, err := ckpt.Get(info.Name)
		if err != nil {
			return nil, fmt.Errorf("checkpoint arena: %w", err)
		}
		return unsafe.Add(unsafe.Pointer(unsafe.SliceData(t.Data)), -(ckpt.DataStart + info.Begin)), nil
	}
	return nil, fmt.Errorf("checkpoint arena: %s holds no tensor bytes", ckpt.Path)
}

// mappedFileID reads the device and inode of the file mapped at base.
func mappedFileID(base uintptr) (dev, ino uint64, err error) {
	m, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, 0, err
	}
	defer m.Close()
	want := strconv.FormatUint(uint64(base), 16) + "-"
	sc := bufio.NewScanner(m)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, want) {
			continue
		}
		// start-end perms offset MAJ:MIN inode path
		fs := strings.Fields(line)
		if len(fs) < 5 {
			break
		}
		mm := strings.SplitN(fs[3], ":", 2)
		maj, err1 := strconv.ParseUint(mm[0], 16, 32)
		var min uint64
		var err2 error = fmt.Errorf("no minor")
		if len(mm) == 2 {
			min, err2 = strconv.ParseUint(mm[1], 16, 32)
		}
		ino, err3 := strconv.ParseUint(fs[4], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			break
		}
		return unix.Mkdev(uint32(maj), uint32(min)), ino, nil
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	return 0, 0, fmt.Errorf("mapping at %#x not found in /proc/self/maps", base)
}

// checkFileArena fails if a's file shrank below its mapping (plugin reads
// past the end would fault); memfd arenas are sealed and always pass.
func checkFileArena(a *Arena) error {
	if !a.borrowed {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(a.Fd(), &st); err != nil {
		return fmt.Errorf("arena %d (%s): %w", a.ID, a.Name, err)
	}
	if st.Size < int64(len(a.mem)) {
		return fmt.Errorf("arena %d (%s): the file shrank from %d to %d bytes after it was mapped", a.ID, a.Name, len(a.mem), st.Size)
	}
	return nil
}

// OriginalRef is the read-only ref of t, a view of a tensor of the
// checkpoint a (CheckpointArena) shares, as stored; ok is false when t's
// bytes are not in a, its dtype is not F16, BF16 or F32, or they are
// misaligned (that tensor keeps the restore path).
func OriginalRef(a *Arena, t safetensors.Tensor) (ref sdk.TensorRef, ok bool) {
	var dt sdk.DType
	switch t.DType {
	case safetensors.F16:
		dt = sdk.F16
	case safetensors.BF16:
		dt = sdk.BF16
	case safetensors.F32:
		dt = sdk.F32
	default:
		return sdk.TensorRef{}, false
	}
	if len(t.Data) == 0 || len(t.Data) != t.Numel()*dt.Size() {
		return sdk.TensorRef{}, false
	}
	off, in := a.contains(unsafe.Pointer(unsafe.SliceData(t.Data)), len(t.Data))
	if !in {
		return sdk.TensorRef{}, false
	}
	ref = sdk.TensorRef{Name: t.Name, Arena: a.ID, Offset: off, DType: dt, Shape: append([]int(nil), t.Shape...)}
	if ref.CheckBounds(uint64(a.Size())) != nil {
		return sdk.TensorRef{}, false
	}
	return ref, true
}
