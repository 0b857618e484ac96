//go:build !amd64

// gelu_other.go: GELU/GEGLU slices on architectures without assembly: the
// portable loops of gelu.go, nothing else.
package nn

func vecGELU(dst, src []float32)   { vecGELUGo(dst, src) }
func vecGEGLU(dst, h, g []float32) { vecGEGLUGo(dst, h, g) }
