// file.go opens a safetensors file by mmap and hands out zero-copy views.
//
// Opening reads the header only; no tensor byte is touched until a caller
// reads a view. A file that shrinks after it was mapped would raise SIGBUS on
// access: the conversion helpers turn that fault into an error (see guard),
// and Check re-reads the size. Pickle checkpoints are refused with advice.
package safetensors

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// File is an open, mmap'd safetensors file. It is safe for concurrent reads.
type File struct {
	Path string
	*Header
	data []byte // the whole file, mapped read-only
	size int64
}

// Tensor is a zero-copy view of one stored tensor. Data aliases the mapping
// and stays valid until the File is closed.
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// Numel is the number of elements.
func (t Tensor) Numel() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// ErrPickle is returned for .ckpt/.pt/.bin pickle checkpoints.
var ErrPickle = errors.New("pickle checkpoints are not loaded")

// Open maps path and parses its header.
func Open(path string) (*File, error) {
	if err := refusePickleName(path); err != nil {
		return nil, err
	}
	fd, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	defer fd.Close()
	st, err := fd.Stat()
	if err != nil {
		return nil, fmt.Errorf("safetensors: %s: %w", path, err)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("safetensors: %s is a directory, not a .safetensors file", path)
	}
	size := st.Size()
	var prefix [8]byte
	if _, err := fd.ReadAt(prefix[:], 0); err != nil && size >= 8 {
		return nil, fmt.Errorf("safetensors: %s: %w", path, err)
	}
	hlen, err := HeaderLen(prefix[:], size)
	if err != nil {
		// Only a file that is not valid safetensors is checked for pickle
		// magic: a real header length can start with the same bytes.
		if perr := refusePickleBytes(path, prefix[:]); perr != nil {
			return nil, perr
		}
		return nil, fmt.Errorf("safetensors: %s: %w", path, err)
	}
	data, err := unix.Mmap(int(fd.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("safetensors: mmap %s: %w", path, err)
	}
	f := &File{Path: path, data: data, size: size}
	var h *Header
	err = guard(func() error {
		var perr error
		h, perr = ParseHeader(data[8:8+hlen], size-8-hlen)
		return perr
	})
	if err != nil {
		unix.Munmap(data)
		return nil, fmt.Errorf("safetensors: %s: %w", path, err)
	}
	f.Header = h
	return f, nil
}

// Close unmaps the file. Views obtained from it must not be used afterwards.
func (f *File) Close() error {
	if f.data == nil {
		return nil
	}
	err := unix.Munmap(f.data)
	f.data = nil
	return err
}

// Names lists tensor names in file (offset) order.
func (f *File) Names() []string {
	out := make([]string, len(f.Tensors))
	for i, t := range f.Tensors {
		out[i] = t.Name
	}
	return out
}

// Get returns a zero-copy view of the named tensor.
func (f *File) Get(name string) (Tensor, error) {
	info, ok := f.Lookup(name)
	if !ok {
		return Tensor{}, fmt.Errorf("safetensors: %s: tensor %q not found", f.Path, name)
	}
	return f.view(info), nil
}

func (f *File) view(info *Info) Tensor {
	b := f.DataStart + info.Begin
	e := f.DataStart + info.End
	return Tensor{Name: info.Name, DType: info.DType, Shape: info.Shape, Data: f.data[b:e:e]}
}

// Release tells the kernel that the named tensor's bytes are not needed in
// memory for now (madvise MADV_DONTNEED on the whole pages inside it): once
// a tensor has been widened into its own memory, its file pages need not
// count towards the process's resident size. A later read faults them in
// again from the file, so views stay valid. Unknown names are ignored.
func (f *File) Release(name string) {
	info, ok := f.Lookup(name)
	if !ok || f.data == nil {
		return
	}
	page := int64(os.Getpagesize())
	b := (f.DataStart + info.Begin + page - 1) / page * page
	e := (f.DataStart + info.End) / page * page
	if e > b {
		unix.Madvise(f.data[b:e], unix.MADV_DONTNEED)
	}
}

// Check verifies that the file on disk still has the size it had when mapped.
func (f *File) Check() error {
	st, err := os.Stat(f.Path)
	if err != nil {
		return fmt.Errorf("safetensors: %s: %w", f.Path, err)
	}
	if st.Size() != f.size {
		return fmt.Errorf("safetensors: %s changed size after it was opened (%d -> %d bytes)", f.Path, f.size, st.Size())
	}
	return nil
}

// Size is the file size in bytes.
func (f *File) Size() int64 { return f.size }

func refusePickleName(path string) error {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".ckpt", ".pt", ".pth", ".bin", ".pkl":
		return pickleError(path)
	}
	return nil
}

func refusePickleBytes(path string, prefix []byte) error {
	// A torch zip archive starts with "PK\x03\x04"; a raw pickle with 0x80
	// and its protocol number (2-5).
	if len(prefix) >= 4 && string(prefix[:4]) == "PK\x03\x04" || len(prefix) >= 2 && prefix[0] == 0x80 && prefix[1] >= 2 && prefix[1] <= 5 {
		return pickleError(path)
	}
	return nil
}

func pickleError(path string) error {
	return fmt.Errorf("safetensors: %s: %w: a pickle can run arbitrary code when loaded; convert it to "+
		".safetensors first (for example with a trusted converter in a sandbox) and pass that file", path, ErrPickle)
}
