package safetensors

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	ref "github.com/nlpodyssey/safetensors"
)

// rawFile builds a safetensors file from a literal header and data section.
func rawFile(t testing.TB, header string, data []byte) string {
	t.Helper()
	b := make([]byte, 8, 8+len(header)+len(data))
	binary.LittleEndian.PutUint64(b, uint64(len(header)))
	b = append(b, header...)
	b = append(b, data...)
	p := filepath.Join(t.TempDir(), "t.safetensors")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func f32bytes(v ...float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func TestWriteThenOpen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "w.safetensors")
	h16 := []byte{0x00, 0x3c, 0x00, 0xc0} // 1.0, -2.0 as F16
	bf := []byte{0x80, 0x3f}              // 1.0 as BF16
	tensors := []TensorData{
		{Spec{"a.weight", F32, []int{2, 2}}, f32bytes(1, 2, 3, 4)},
		{Spec{"b", F16, []int{2}}, h16},
		{Spec{"c", BF16, []int{}}, bf},
		{Spec{"empty", F32, []int{0, 3}}, nil},
	}
	if err := WriteFile(p, tensors, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Metadata["format"] != "pt" {
		t.Errorf("metadata = %v", f.Metadata)
	}
	if got, want := f.Names(), []string{"a.weight", "b", "c", "empty"}; !slices.Equal(got, want) {
		t.Errorf("Names() = %v, want %v", got, want)
	}
	tests := []struct {
		name string
		want []float32
	}{
		{"a.weight", []float32{1, 2, 3, 4}},
		{"b", []float32{1, -2}},
		{"c", []float32{1}},
		{"empty", []float32{}},
	}
	for _, tt := range tests {
		tn, err := f.Get(tt.name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tn.Float32()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s = %v, want %v", tt.name, got, tt.want)
		}
	}
	// The reference parser accepts what we write.
	raw, _ := os.ReadFile(p)
	st, err := ref.Deserialize(raw)
	if err != nil {
		t.Fatalf("nlpodyssey/safetensors rejects our file: %v", err)
	}
	if st.Len() != 4 {
		t.Errorf("reference sees %d tensors", st.Len())
	}
}

func TestOpenRejects(t *testing.T) {
	ok := `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`
	tests := []struct {
		name, header string
		data         []byte
		want         string
	}{
		{"truncated data", ok, make([]byte, 4), "need 8 data bytes"},
		{"trailing bytes", ok, make([]byte, 12), "trailing bytes"},
		{"duplicate key", `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8), "duplicate key"},
		{"overlap", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8), "overlaps"},
		{"gap", `{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8), "gap"},
		{"size mismatch", `{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, make([]byte, 8), "needs 12 bytes"},
		{"unknown dtype", `{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4), "unknown dtype"},
		{"negative dim", `{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, make([]byte, 4), "negative"},
		{"not an object", `[1,2]`, nil, "not a JSON object"},
		{"bad json", `{"a":`, nil, "invalid safetensors"},
		{"non-utf8", "{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", make([]byte, 4), "UTF-8"},
		{"extra field", `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}`, make([]byte, 4), "unknown field"},
		{"missing field", `{"a":{"dtype":"F32","shape":[1]}}`, make([]byte, 4), "needs dtype"},
		{"metadata not string", `{"__metadata__":{"k":1}}`, nil, "not a string"},
		{"huge shape", `{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, make([]byte, 4), "overflows"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := rawFile(t, tt.header, tt.data)
			_, err := Open(p)
			if err == nil {
				t.Fatalf("Open accepted a bad file")
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), p) {
				t.Errorf("error %q should mention %q and the path", err, tt.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %q does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestOpenRejectsFiles(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short.safetensors")
	os.WriteFile(short, []byte{1, 2, 3}, 0o644)
	long := filepath.Join(dir, "long.safetensors")
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b, 1<<20)
	os.WriteFile(long, b, 0o644)
	zip := filepath.Join(dir, "model.safetensors")
	os.WriteFile(zip, []byte("PK\x03\x04rest-of-a-torch-zip"), 0o644)
	ckpt := filepath.Join(dir, "model.ckpt")
	os.WriteFile(ckpt, []byte("anything"), 0o644)
	tests := []struct{ name, path, want string }{
		{"directory", dir, "is a directory"},
		{"missing", filepath.Join(dir, "nope.safetensors"), "no such file"},
		{"too short", short, "too short"},
		{"header beyond file", long, "runs past the end"},
		{"torch zip", zip, "convert it to .safetensors"},
		{"ckpt name", ckpt, "convert it to .safetensors"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open(%s) error = %v, want %q", tt.path, err, tt.want)
			}
		})
	}
}

// A file truncated after it was mapped must give an error, not SIGBUS.
func TestShrinkAfterOpen(t *testing.T) {
	n := 1 << 16 // 64 Ki floats = 256 KiB, several pages
	p := filepath.Join(t.TempDir(), "big.safetensors")
	if err := WriteFile(p, []TensorData{{Spec{"w", F32, []int{n}}, make([]byte, 4*n)}}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Truncate(p, 4096); err != nil {
		t.Fatal(err)
	}
	if err := f.Check(); err == nil {
		t.Error("Check did not notice the file shrank")
	}
	tn, _ := f.Get("w")
	_, err = tn.Float32()
	if !errors.Is(err, ErrFault) {
		t.Fatalf("reading a truncated mapping: err = %v, want ErrFault", err)
	}
}

func TestF16Exhaustive(t *testing.T) {
	src := make([]uint16, 1<<16)
	for i := range src {
		src[i] = uint16(i)
	}
	dst := make([]float32, len(src))
	F16ToF32(dst, src)
	for i, h := range src {
		// Independent decode through float64 arithmetic.
		e := int(h>>10) & 31
		m := float64(h & 0x3ff)
		var want float64
		switch {
		case e == 0:
			want = m * math.Pow(2, -24)
		case e == 31 && m == 0:
			want = math.Inf(1)
		case e == 31:
			want = math.NaN()
		default:
			want = (1 + m/1024) * math.Pow(2, float64(e-15))
		}
		if h&0x8000 != 0 {
			want = -want
		}
		got := float64(dst[i])
		if math.IsNaN(want) != math.IsNaN(got) || !math.IsNaN(want) && got != want {
			t.Fatalf("F16 %#04x -> %v, want %v", h, got, want)
		}
		if math.IsNaN(want) {
			continue
		}
		// Narrowing an exact half gives the same bits back (except -0 stays -0).
		if back := F32ToF16(dst[i]); back != h {
			t.Fatalf("F32ToF16(%v) = %#04x, want %#04x", dst[i], back, h)
		}
	}
}

func TestF32ToF16Rounding(t *testing.T) {
	tests := []struct {
		in   float32
		want uint16
	}{
		{1 + 1.0/2048, 0x3c00},               // tie -> even (down)
		{1 + 3.0/2048, 0x3c02},               // tie -> even (up)
		{65520, 0x7c00},                      // rounds to +Inf
		{65504, 0x7bff},                      // max half
		{float32(math.Pow(2, -25)), 0x0000},  // tie between 0 and min subnormal -> 0
		{float32(math.Pow(2, -25)) * 1.5, 1}, // above the tie -> min subnormal
		{float32(math.Pow(2, -14)), 0x0400},  // min normal
		{-2, 0xc000},
	}
	for _, tt := range tests {
		if got := F32ToF16(tt.in); got != tt.want {
			t.Errorf("F32ToF16(%g) = %#04x, want %#04x", tt.in, got, tt.want)
		}
	}
}

func TestBF16AndF8(t *testing.T) {
	if got := F32ToBF16(1.00390625); got != 0x3f80 { // tie -> even
		t.Errorf("F32ToBF16 tie = %#x", got)
	}
	dst := make([]float32, 1)
	BF16ToF32(dst, []uint16{0xc040})
	if dst[0] != -3 {
		t.Errorf("BF16 0xc040 = %v", dst[0])
	}
	tests := []struct {
		dt   DType
		b    byte
		want float32
	}{
		{F8E4M3, 0x38, 1},   // exp 7, mant 0
		{F8E4M3, 0x7e, 448}, // max finite
		{F8E4M3, 0x01, 1.0 / 512},
		{F8E4M3, 0xb8, -1},
		{F8E5M2, 0x3c, 1},
		{F8E5M2, 0x7b, 57344}, // max finite
	}
	for _, tt := range tests {
		tn := Tensor{Name: "x", DType: tt.dt, Shape: []int{1}, Data: []byte{tt.b}}
		got, err := tn.Float32()
		if err != nil || got[0] != tt.want {
			t.Errorf("%s %#02x = %v, %v; want %v", tt.dt, tt.b, got, err, tt.want)
		}
	}
	nan := Tensor{Name: "x", DType: F8E4M3, Shape: []int{1}, Data: []byte{0x7f}}
	if got, _ := nan.Float32(); !math.IsNaN(float64(got[0])) {
		t.Errorf("E4M3 0x7f = %v, want NaN", got[0])
	}
}

func TestSharded(t *testing.T) {
	dir := t.TempDir()
	WriteFile(filepath.Join(dir, "s1.safetensors"), []TensorData{{Spec{"a", F32, []int{1}}, f32bytes(1)}}, nil)
	WriteFile(filepath.Join(dir, "s2.safetensors"), []TensorData{{Spec{"b", F32, []int{1}}, f32bytes(2)}}, nil)
	idx := filepath.Join(dir, "model.safetensors.index.json")
	os.WriteFile(idx, []byte(`{"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}`), 0o644)
	s, err := OpenIndex(idx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tb, err := s.Get("b")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := tb.Float32(); v[0] != 2 {
		t.Errorf("b = %v", v)
	}
	bad := filepath.Join(dir, "bad.index.json")
	os.WriteFile(bad, []byte(`{"weight_map":{"a":"s2.safetensors"}}`), 0o644)
	if _, err := OpenIndex(bad); err == nil || !strings.Contains(err.Error(), `"a" is not in shard`) {
		t.Errorf("wrong shard: err = %v", err)
	}
	evil := filepath.Join(dir, "evil.index.json")
	os.WriteFile(evil, []byte(`{"weight_map":{"a":"../../etc/passwd"}}`), 0o644)
	if _, err := OpenIndex(evil); err == nil {
		t.Error("path traversal in the index accepted")
	}
}

func TestWriterChecks(t *testing.T) {
	var sink strings.Builder
	w, err := NewWriter(&sink, []Spec{{"a", F32, []int{2}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteTensor("b", make([]byte, 8)); err == nil {
		t.Error("out-of-order tensor accepted")
	}
	if err := w.WriteTensor("a", make([]byte, 4)); err == nil {
		t.Error("short tensor accepted")
	}
	if err := w.Close(); err == nil {
		t.Error("Close accepted a missing tensor")
	}
	if _, err := NewWriter(&sink, []Spec{{"a", F32, nil}, {"a", F32, nil}}, nil); err == nil {
		t.Error("duplicate names accepted")
	}
}

// A header of 1152 bytes starts "80 04 ...", like a pickle: still accepted.
func TestHeaderLengthThatLooksLikePickle(t *testing.T) {
	name := strings.Repeat("x", 1152-len(`{"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`))
	hdr := `{"` + name + `":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`
	if len(hdr) != 1152 {
		t.Fatalf("header is %d bytes", len(hdr))
	}
	p := rawFile(t, hdr, f32bytes(1))
	f, err := Open(p)
	if err != nil {
		t.Fatalf("valid file refused: %v", err)
	}
	f.Close()
	raw := filepath.Join(t.TempDir(), "model.safetensors")
	os.WriteFile(raw, []byte("\x80\x02}q\x00(X\x05\x00\x00\x00state"), 0o644)
	if _, err := Open(raw); !errors.Is(err, ErrPickle) {
		t.Errorf("raw pickle: err = %v, want ErrPickle", err)
	}
}

// Release drops pages from memory but views still read the same values.
func TestReleaseKeepsViewsValid(t *testing.T) {
	n := 1 << 15 // 128 KiB of float32: several whole pages
	vals := make([]float32, n)
	for i := range vals {
		vals[i] = float32(i)
	}
	p := filepath.Join(t.TempDir(), "r.safetensors")
	if err := WriteFile(p, []TensorData{{Spec{"w", F32, []int{n}}, f32bytes(vals...)}}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Release("w")
	f.Release("missing") // ignored
	tn, _ := f.Get("w")
	got, err := tn.Float32()
	if err != nil || !slices.Equal(got, vals) {
		t.Fatalf("after Release: %v, values equal %v", err, slices.Equal(got, vals))
	}
}
