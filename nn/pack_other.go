//go:build !amd64

// pack_other.go: no vector panel packing on this architecture; callers
// use the portable transpose in gemm.go.
package nn

func packTransposed(panel []float32, w int, src []float32, ld, kc int) bool { return false }
