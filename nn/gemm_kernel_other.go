//go:build !amd64

// gemm_kernel_other.go: the portable GEMM micro-kernel choice for
// architectures without an assembly kernel. It does not probe CPU features.
package nn

func pickKernel() microKernel {
	return microKernel{mr: 4, nr: 8, name: "go-4x8", fn: goKernel4x8}
}

// availableKernels lists every micro-kernel this CPU can run.
func availableKernels() []microKernel { return []microKernel{pickKernel()} }
