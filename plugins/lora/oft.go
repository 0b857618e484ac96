// oft.go implements OFT (spec §8.2, kohya-ss/sd-scripts networks/oft.py): a
// block-diagonal rotation of the weight's output rows, built per block by
// the Cayley transform of a skew-symmetric matrix, in float64:
//
//	Q = B − Bᵀ                     per block, B = oft_blocks [n, bs, bs], bs = out / n
//	Q = Q·(min(‖Q‖_F, c) + 1e-8)/(‖Q‖_F + 1e-8)   Frobenius norm over all blocks
//	R = (I + Q)(I − Q)⁻¹
//	Rm = I + m·(R − I)
//	W'[k, j, :] = Σ_i Rm[k, i, j]·W[k, i, :]       W viewed as [n, bs, in*kh*kw]
//
// The constraint c is alpha·out for kohya files (prefix oft_unet_) and alpha
// for LyCORIS diag-OFT (ComfyUI clips ‖Q‖ at alpha); no alpha means no
// constraint. The result depends on the weight it sees, so it runs in
// adapter order. LyCORIS' "rescale" vector is refused (its strength blend is
// unverified on SD 1.5 files).
package lora

import (
	"fmt"
	"math"
	"strings"
)

// checkOFT validates oft_blocks against the weight shape w (rescale is
// refused by check.go before).
func checkOFT(m *Module, w []int) error {
	b := m.Shape[PartOFTBlocks]
	if len(b) != 3 || b[1] != b[2] || b[0]*b[1] != w[0] {
		return fmt.Errorf("oft_blocks must be [n, bs, bs] with n*bs = %d output rows", w[0])
	}
	return nil
}

// oftConstraint is c, or 0 for none.
func oftConstraint(m *Module, out int) float64 {
	if !m.HasA || m.Alpha <= 0 {
		return 0
	}
	if strings.HasPrefix(m.Name, "oft_unet_") {
		return m.Alpha * float64(out)
	}
	return m.Alpha
}

// applyOFT rotates the rows of w (shape shape) in place with strength str.
func applyOFT(m *Module, blocks []float32, str float64, shape []int, w []float32) {
	out := shape[0]
	bs := m.Shape[PartOFTBlocks][1]
	n := out / bs
	row := len(w) / out
	// Q = B − Bᵀ per block, and its Frobenius norm over all blocks.
	q := make([]float64, n*bs*bs) // [n, bs, bs]
	var ss float64
	for k := 0; k < n; k++ {
		blk := blocks[k*bs*bs : (k+1)*bs*bs]
		for i := 0; i < bs; i++ {
			for j := 0; j < bs; j++ {
				v := float64(blk[i*bs+j]) - float64(blk[j*bs+i])
				q[(k*bs+i)*bs+j] = v
				ss += v * v
			}
		}
	}
	if c := oftConstraint(m, out); c > 0 {
		norm := math.Sqrt(ss)
		f := (math.Min(norm, c) + 1e-8) / (norm + 1e-8)
		for i := range q {
			q[i] *= f
		}
	}
	rm := make([]float64, bs*bs)   // [bs, bs]
	tmp := make([]float64, bs*row) // [bs, row]
	for k := 0; k < n; k++ {
		cayley(q[k*bs*bs:(k+1)*bs*bs], bs, rm)
		// Rm = I + m·(R − I)
		for i := 0; i < bs; i++ {
			for j := 0; j < bs; j++ {
				id := 0.0
				if i == j {
					id = 1
				}
				rm[i*bs+j] = id + str*(rm[i*bs+j]-id)
			}
		}
		// W'[k, j, :] = Σ_i Rm[i, j]·W[k, i, :]      [bs, bs]ᵀ @ [bs, row]
		wk := w[k*bs*row : (k+1)*bs*row]
		clear(tmp)
		for i := 0; i < bs; i++ {
			src := wk[i*row : (i+1)*row]
			for j := 0; j < bs; j++ {
				c := rm[i*bs+j]
				if c == 0 {
					continue
				}
				dst := tmp[j*row : (j+1)*row]
				for x, v := range src {
					dst[x] += c * float64(v)
				}
			}
		}
		for i, v := range tmp {
			wk[i] = float32(v)
		}
	}
}

// cayley writes R = (I + Q)(I − Q)⁻¹ for one [bs, bs] block into r.
// I − Q is invertible for skew-symmetric Q (its eigenvalues are 1 − iλ).
func cayley(q []float64, bs int, r []float64) {
	// Gauss-Jordan on [I − Q | I] with partial pivoting gives (I − Q)⁻¹.
	a := make([]float64, bs*2*bs) // [bs, 2bs]
	for i := 0; i < bs; i++ {
		for j := 0; j < bs; j++ {
			v := -q[i*bs+j]
			if i == j {
				v++
			}
			a[i*2*bs+j] = v
		}
		a[i*2*bs+bs+i] = 1
	}
	w := 2 * bs
	for col := 0; col < bs; col++ {
		p := col
		for i := col + 1; i < bs; i++ {
			if math.Abs(a[i*w+col]) > math.Abs(a[p*w+col]) {
				p = i
			}
		}
		if p != col {
			for j := 0; j < w; j++ {
				a[p*w+j], a[col*w+j] = a[col*w+j], a[p*w+j]
			}
		}
		inv := 1 / a[col*w+col]
		for j := 0; j < w; j++ {
			a[col*w+j] *= inv
		}
		for i := 0; i < bs; i++ {
			if i == col || a[i*w+col] == 0 {
				continue
			}
			f := a[i*w+col]
			for j := 0; j < w; j++ {
				a[i*w+j] -= f * a[col*w+j]
			}
		}
	}
	// R = (I + Q) @ inv
	for i := 0; i < bs; i++ {
		for j := 0; j < bs; j++ {
			var s float64
			for p := 0; p < bs; p++ {
				ip := q[i*bs+p]
				if i == p {
					ip++
				}
				s += ip * a[p*w+bs+j]
			}
			r[i*bs+j] = s
		}
	}
}
