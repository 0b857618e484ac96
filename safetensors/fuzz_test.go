package safetensors

import (
	"encoding/binary"
	"testing"

	ref "github.com/nlpodyssey/safetensors"
)

// FuzzParseHeader feeds arbitrary bytes to the header parser: it must never
// panic, and whatever it accepts must tile the data section exactly and be
// accepted by the reference parser too (when no F8 dtype is involved).
func FuzzParseHeader(f *testing.F) {
	f.Add([]byte(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`), uint16(8))
	f.Add([]byte(`{"__metadata__":{"format":"pt"},"b":{"dtype":"F16","shape":[1,1],"data_offsets":[0,2]}}`), uint16(2))
	f.Add([]byte(`{"a":{"dtype":"F8_E4M3","shape":[],"data_offsets":[0,1]}}`), uint16(1))
	f.Add([]byte(`{}`), uint16(0))
	f.Fuzz(func(t *testing.T, js []byte, dataLen uint16) {
		h, err := ParseHeader(js, int64(dataLen))
		if err != nil {
			return
		}
		var pos int64
		hasF8 := false
		for _, ti := range h.Tensors {
			if ti.Begin != pos {
				t.Fatalf("accepted a layout with a gap or overlap at %q", ti.Name)
			}
			if int64(ti.Numel()*ti.DType.Size()) != ti.End-ti.Begin {
				t.Fatalf("accepted a size mismatch at %q", ti.Name)
			}
			pos = ti.End
			hasF8 = hasF8 || ti.DType == F8E4M3 || ti.DType == F8E5M2
		}
		if pos != int64(dataLen) {
			t.Fatalf("accepted %d data bytes for a %d-byte section", pos, dataLen)
		}
		if hasF8 {
			return
		}
		buf := make([]byte, 8+len(js)+int(dataLen))
		binary.LittleEndian.PutUint64(buf, uint64(len(js)))
		copy(buf[8:], js)
		if _, err := ref.Deserialize(buf); err != nil {
			t.Fatalf("we accept a header the reference rejects: %v", err)
		}
	})
}
