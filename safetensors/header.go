// header.go parses and validates the JSON header of a safetensors file.
//
// Validation is strict and mirrors github.com/nlpodyssey/safetensors (which
// rejects overlaps, gaps, out-of-range offsets and size mismatches) and adds
// what it lacks: duplicate keys, non-UTF-8 names, F8 dtypes, an explicit bound
// on the header length. It does not touch tensor bytes.
package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"unicode/utf8"
)

// MaxHeaderLen bounds the JSON header (the reference implementation uses 100 MB).
const MaxHeaderLen = 100_000_000

// ErrInvalid is wrapped by every header validation error.
var ErrInvalid = errors.New("invalid safetensors")

// Info describes one tensor as the header declares it.
type Info struct {
	Name  string
	DType DType
	Shape []int
	// Begin and End are byte offsets relative to the start of the data section.
	Begin, End int64
}

// Numel is the number of elements (1 for a scalar of shape []).
func (i *Info) Numel() int {
	n := 1
	for _, d := range i.Shape {
		n *= d
	}
	return n
}

// Header is a parsed, validated safetensors header.
type Header struct {
	// Tensors in data-offset order.
	Tensors  []Info
	Metadata map[string]string
	// DataStart is the absolute file offset of the data section (8 + header length).
	DataStart int64
	byName    map[string]int
}

// Lookup returns the info of a tensor by name.
func (h *Header) Lookup(name string) (*Info, bool) {
	i, ok := h.byName[name]
	if !ok {
		return nil, false
	}
	return &h.Tensors[i], true
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// HeaderLen reads the 8-byte prefix and returns the JSON header length.
func HeaderLen(prefix []byte, fileSize int64) (int64, error) {
	if len(prefix) < 8 || fileSize < 8 {
		return 0, invalid("file of %d bytes is too short for the 8-byte header length", fileSize)
	}
	n := binary.LittleEndian.Uint64(prefix[:8])
	if n > MaxHeaderLen {
		return 0, invalid("header length %d exceeds the limit of %d bytes", n, MaxHeaderLen)
	}
	if int64(n) > fileSize-8 {
		return 0, invalid("header length %d runs past the end of the file (%d bytes)", n, fileSize)
	}
	return int64(n), nil
}

type rawEntry struct {
	DType       *string  `json:"dtype"`
	Shape       *[]int64 `json:"shape"`
	DataOffsets *[]int64 `json:"data_offsets"`
}

// ParseHeader parses the JSON header bytes. dataLen is the size of the data
// section (file size - 8 - len(js)); every byte of it must belong to exactly
// one tensor.
func ParseHeader(js []byte, dataLen int64) (*Header, error) {
	if !utf8.Valid(js) {
		return nil, invalid("header is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, invalid("header is not JSON: %v", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, invalid("header is not a JSON object")
	}
	h := &Header{byName: map[string]int{}, DataStart: 8 + int64(len(js))}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, invalid("header: %v", err)
		}
		key, _ := tok.(string)
		if seen[key] {
			return nil, invalid("duplicate key %q", key)
		}
		seen[key] = true
		if key == "__metadata__" {
			var md map[string]any
			if err := dec.Decode(&md); err != nil {
				return nil, invalid("__metadata__: %v", err)
			}
			h.Metadata = make(map[string]string, len(md))
			for k, v := range md {
				s, ok := v.(string)
				if !ok {
					return nil, invalid("__metadata__ value of %q is not a string", k)
				}
				h.Metadata[k] = s
			}
			continue
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, invalid("tensor %q: %v", key, err)
		}
		info, err := parseEntry(key, raw)
		if err != nil {
			return nil, err
		}
		h.Tensors = append(h.Tensors, info)
	}
	if _, err := dec.Token(); err != nil {
		return nil, invalid("header: %v", err)
	}
	if rest := bytes.TrimRight(js[dec.InputOffset():], " \t\r\n"); len(rest) > 0 {
		return nil, invalid("trailing data after the header object")
	}
	if err := h.checkLayout(dataLen); err != nil {
		return nil, err
	}
	for i := range h.Tensors {
		h.byName[h.Tensors[i].Name] = i
	}
	return h, nil
}

func parseEntry(name string, raw json.RawMessage) (Info, error) {
	if name == "" {
		return Info{}, invalid("empty tensor name")
	}
	// Reject unknown fields and duplicate fields inside an entry.
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var e rawEntry
	if err := dec.Decode(&e); err != nil {
		return Info{}, invalid("tensor %q: %v", name, err)
	}
	if err := noDuplicateFields(raw); err != nil {
		return Info{}, invalid("tensor %q: %v", name, err)
	}
	if e.DType == nil || e.Shape == nil || e.DataOffsets == nil {
		return Info{}, invalid("tensor %q: entry needs dtype, shape and data_offsets", name)
	}
	dt, err := ParseDType(*e.DType)
	if err != nil {
		return Info{}, invalid("tensor %q: %v", name, err)
	}
	if len(*e.DataOffsets) != 2 {
		return Info{}, invalid("tensor %q: data_offsets must have two entries", name)
	}
	info := Info{Name: name, DType: dt, Begin: (*e.DataOffsets)[0], End: (*e.DataOffsets)[1]}
	if info.Begin < 0 || info.End < info.Begin {
		return Info{}, invalid("tensor %q: bad data_offsets [%d, %d]", name, info.Begin, info.End)
	}
	numel := int64(1)
	for _, d := range *e.Shape {
		if d < 0 {
			return Info{}, invalid("tensor %q: negative dimension %d", name, d)
		}
		if d != 0 && numel > math.MaxInt64/8/d {
			return Info{}, invalid("tensor %q: shape %v overflows", name, *e.Shape)
		}
		numel *= d
		info.Shape = append(info.Shape, int(d))
	}
	if info.Shape == nil {
		info.Shape = []int{}
	}
	if want := numel * int64(dt.Size()); info.End-info.Begin != want {
		return Info{}, invalid("tensor %q: %s%v needs %d bytes but data_offsets [%d, %d] hold %d",
			name, dt, info.Shape, want, info.Begin, info.End, info.End-info.Begin)
	}
	return info, nil
}

func noDuplicateFields(raw json.RawMessage) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return err
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		k, _ := tok.(string)
		if seen[k] {
			return fmt.Errorf("duplicate field %q", k)
		}
		seen[k] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	return nil
}

// checkLayout sorts tensors by offset and checks that they tile the data
// section exactly: no overlap, no gap, nothing past the end, no trailing bytes.
func (h *Header) checkLayout(dataLen int64) error {
	sort.SliceStable(h.Tensors, func(i, j int) bool {
		a, b := h.Tensors[i], h.Tensors[j]
		if a.Begin != b.Begin {
			return a.Begin < b.Begin
		}
		return a.End < b.End
	})
	var pos int64
	for _, t := range h.Tensors {
		switch {
		case t.Begin < pos:
			return invalid("tensor %q at [%d, %d] overlaps the previous tensor (ends at %d)", t.Name, t.Begin, t.End, pos)
		case t.Begin > pos:
			return invalid("gap of %d bytes before tensor %q at offset %d", t.Begin-pos, t.Name, t.Begin)
		}
		pos = t.End
	}
	if pos > dataLen {
		return invalid("tensors need %d data bytes but the file holds %d", pos, dataLen)
	}
	if pos < dataLen {
		return invalid("%d trailing bytes after the last tensor", dataLen-pos)
	}
	return nil
}
