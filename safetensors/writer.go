// writer.go streams a safetensors file: the header is computed from the list
// of tensors up front, then tensor bytes are written one at a time in that
// order, so a merged checkpoint never has to be held in memory. It does not
// reorder tensors or convert dtypes; callers pass bytes in the declared dtype.
package safetensors

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// Spec declares one tensor for the writer.
type Spec struct {
	Name  string
	DType DType
	Shape []int
}

// Writer writes tensors in the declared order.
type Writer struct {
	w     *bufio.Writer
	specs []Spec
	next  int
}

// NewWriter writes the header for specs (in that order) and metadata to w.
func NewWriter(w io.Writer, specs []Spec, metadata map[string]string) (*Writer, error) {
	var hdr strings.Builder
	hdr.WriteByte('{')
	first := true
	put := func(k string, v any) error {
		kb, _ := json.Marshal(k)
		vb, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if !first {
			hdr.WriteByte(',')
		}
		first = false
		hdr.Write(kb)
		hdr.WriteByte(':')
		hdr.Write(vb)
		return nil
	}
	if len(metadata) > 0 {
		if err := put("__metadata__", metadata); err != nil {
			return nil, err
		}
	}
	seen := map[string]bool{}
	var off int64
	for _, s := range specs {
		if s.Name == "" || s.Name == "__metadata__" || seen[s.Name] {
			return nil, fmt.Errorf("safetensors: writer: bad or duplicate tensor name %q", s.Name)
		}
		seen[s.Name] = true
		if _, err := ParseDType(string(s.DType)); err != nil {
			return nil, fmt.Errorf("safetensors: writer: tensor %q: %w", s.Name, err)
		}
		n := int64(s.DType.Size())
		shape := s.Shape
		if shape == nil {
			shape = []int{}
		}
		for _, d := range shape {
			n *= int64(d)
		}
		entry := struct {
			DType       DType   `json:"dtype"`
			Shape       []int   `json:"shape"`
			DataOffsets []int64 `json:"data_offsets"`
		}{s.DType, shape, []int64{off, off + n}}
		if err := put(s.Name, entry); err != nil {
			return nil, err
		}
		off += n
	}
	hdr.WriteByte('}')
	// Pad with spaces so the data section starts 8-byte aligned.
	for (hdr.Len())%8 != 0 {
		hdr.WriteByte(' ')
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	var lenb [8]byte
	binary.LittleEndian.PutUint64(lenb[:], uint64(hdr.Len()))
	if _, err := bw.Write(lenb[:]); err != nil {
		return nil, err
	}
	if _, err := bw.WriteString(hdr.String()); err != nil {
		return nil, err
	}
	return &Writer{w: bw, specs: specs}, nil
}

// WriteTensor writes the bytes of the next declared tensor; name must match.
func (w *Writer) WriteTensor(name string, data []byte) error {
	if w.next >= len(w.specs) {
		return fmt.Errorf("safetensors: writer: tensor %q not declared (all %d written)", name, len(w.specs))
	}
	s := w.specs[w.next]
	if s.Name != name {
		return fmt.Errorf("safetensors: writer: got tensor %q, want %q next", name, s.Name)
	}
	want := s.DType.Size()
	for _, d := range s.Shape {
		want *= d
	}
	if len(data) != want {
		return fmt.Errorf("safetensors: writer: tensor %q: %d bytes, want %d", name, len(data), want)
	}
	w.next++
	_, err := w.w.Write(data)
	return err
}

// Close flushes and checks that every declared tensor was written.
func (w *Writer) Close() error {
	if w.next != len(w.specs) {
		return fmt.Errorf("safetensors: writer: %d of %d tensors written", w.next, len(w.specs))
	}
	return w.w.Flush()
}

// TensorData is a whole tensor for WriteFile.
type TensorData struct {
	Spec
	Data []byte
}

// WriteFile writes tensors to path atomically (temp file + rename).
func WriteFile(path string, tensors []TensorData, metadata map[string]string) error {
	tmp, err := os.CreateTemp(dirOf(path), ".sdbridge-*.safetensors.tmp")
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	defer os.Remove(tmp.Name())
	specs := make([]Spec, len(tensors))
	for i, t := range tensors {
		specs[i] = t.Spec
	}
	w, err := NewWriter(tmp, specs, metadata)
	if err == nil {
		for _, t := range tensors {
			if err = w.WriteTensor(t.Name, t.Data); err != nil {
				break
			}
		}
	}
	if err == nil {
		err = w.Close()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("safetensors: writing %s: %w", path, err)
	}
	return os.Rename(tmp.Name(), path)
}

func dirOf(path string) string {
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		return path[:i+1]
	}
	return "."
}
