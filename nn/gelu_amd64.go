// gelu_amd64.go: routes GELU/GEGLU slices to the AVX-512 loops in
// gelu_amd64.s, then recomputes exactly the elements whose input is below
// geluFastMin (where 1+erf loses relative precision). It does not use
// AVX2; CPUs without AVX-512 take the portable loop.
package nn

//go:noescape
func vecGELUAVX512(dst, src *float32, n int)

//go:noescape
func vecGEGLUAVX512(dst, h, gate *float32, n int)

// geluFastMin is the smallest input the vector erf serves; below it,
// 1+erf(x/sqrt2) < 0.32 and its 4e-7 absolute error would exceed 1e-6
// relative.
const geluFastMin = -1

func vecGELU(dst, src []float32) {
	dst = dst[:len(src)]
	if !useAVX512 || len(src) < 16 {
		vecGELUGo(dst, src)
		return
	}
	// Chunks of 256 with a copy of the inputs, so the exact pass still
	// sees them when dst aliases src (in-place GELU).
	var in [256]float32
	for len(src) >= 16 {
		n := min(len(src), len(in)) &^ 15
		copy(in[:n], src[:n])
		vecGELUAVX512(&dst[0], &in[0], n)
		for i, v := range in[:n] {
			if v < geluFastMin {
				dst[i] = geluExact(v)
			}
		}
		dst, src = dst[n:], src[n:]
	}
	vecGELUGo(dst, src)
}

func vecGEGLU(dst, h, g []float32) {
	n := len(g) &^ 15
	dst, h = dst[:len(g)], h[:len(g)]
	if !useAVX512 || n == 0 {
		vecGEGLUGo(dst, h, g)
		return
	}
	vecGEGLUAVX512(&dst[0], &h[0], &g[0], n)
	for i, v := range g[:n] {
		if v < geluFastMin {
			dst[i] = h[i] * geluExact(v)
		}
	}
	vecGEGLUGo(dst[n:], h[n:], g[n:])
}
