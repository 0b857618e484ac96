// pack_amd64.go: routes full 16- and 32-wide transposed panel packs to the
// AVX-512 gathers in pack_amd64.s; it reports false (caller packs in Go)
// for other widths, partial panels, CPUs without AVX-512 and strides
// whose offsets would overflow the gathers' int32 indices.
package nn

//go:noescape
func packT32AVX512(dst, src *float32, ld, kc int)

//go:noescape
func packT16AVX512(dst, src *float32, ld, kc int)

// packTransposed writes panel[l*w+j] = src[j*ld+l] for j < w, l < kc.
func packTransposed(panel []float32, w int, src []float32, ld, kc int) bool {
	if !useAVX512 || kc <= 0 || (w != 16 && w != 32) || ld*w >= 1<<31 {
		return false
	}
	_, _ = panel[w*kc-1], src[(w-1)*ld+kc-1]
	if w == 32 {
		packT32AVX512(&panel[0], &src[0], ld, kc)
	} else {
		packT16AVX512(&panel[0], &src[0], ld, kc)
	}
	return true
}
