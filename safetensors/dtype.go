// Package safetensors reads and writes the safetensors container: an 8-byte
// little-endian header length, a JSON header, then the raw tensor bytes.
//
// Files are opened by mmap and tensors are zero-copy views into the mapping;
// conversions to float32 allocate only when asked. This package knows nothing
// about models: what the tensors mean is the business of models/ and plugins/.
package safetensors

import "fmt"

// DType is the element type of a stored tensor, spelled as in the header.
type DType string

// The dtypes this package reads. F8 types are converted to float32 on read.
const (
	BOOL   DType = "BOOL"
	U8     DType = "U8"
	I8     DType = "I8"
	I16    DType = "I16"
	U16    DType = "U16"
	F16    DType = "F16"
	BF16   DType = "BF16"
	I32    DType = "I32"
	U32    DType = "U32"
	F32    DType = "F32"
	F64    DType = "F64"
	I64    DType = "I64"
	U64    DType = "U64"
	F8E4M3 DType = "F8_E4M3"
	F8E5M2 DType = "F8_E5M2"
)

var dtypeSizes = map[DType]int{
	BOOL: 1, U8: 1, I8: 1, F8E4M3: 1, F8E5M2: 1,
	I16: 2, U16: 2, F16: 2, BF16: 2,
	I32: 4, U32: 4, F32: 4,
	F64: 8, I64: 8, U64: 8,
}

// ParseDType validates a header dtype string.
func ParseDType(s string) (DType, error) {
	d := DType(s)
	if _, ok := dtypeSizes[d]; !ok {
		return "", fmt.Errorf("unknown dtype %q", s)
	}
	return d, nil
}

// Size is the size of one element in bytes.
func (d DType) Size() int { return dtypeSizes[d] }

// IsFloat reports whether the dtype holds floating-point numbers.
func (d DType) IsFloat() bool {
	switch d {
	case F16, BF16, F32, F64, F8E4M3, F8E5M2:
		return true
	}
	return false
}
