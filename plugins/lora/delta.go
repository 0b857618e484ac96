// delta.go rebuilds the unscaled ΔW of the low-rank algorithms in float32
// (spec §8): LoRA/LoCon, LoCon Tucker, LoHa and LoHa CP, LoKr (full and
// decomposed sides) and LoKr Tucker. ΔW is written flattened to
// [out, in*kh*kw], which is the memory layout of the target weight whatever
// its rank, so a 1x1 conv and a linear share one path.
//
// Shapes were validated by check.go before this runs. It does not scale,
// apply strengths or touch the target weight (apply.go).
package lora

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// delta writes the unscaled ΔW of m, for a weight of shape w whose current
// values are cur, into dst [numel(w)]. Only GLoRA reads cur.
func (f *File) delta(m *Module, w []int, cur, dst []float32) error {
	fs, err := f.load(m)
	if err != nil {
		return err
	}
	out := w[0]
	in := len(dst) / out
	switch m.Algo {
	case AlgoLoRA:
		up, down := fs[PartUp], fs[PartDown]
		if m.Tucker {
			// ΔW[o,c,y,x] = Σ_{i,j} up[o,i]·mid[i,j,y,x]·down[j,c]
			mid := fs[PartMid]
			rebuildTucker(mid, up.Data, down.Data, out, w[1], dst)
			return nil
		}
		r := down.Shape[0]
		// ΔW = up.flatten(1) @ down.flatten(1)      [out, r] @ [r, in*kh*kw]
		nn.Gemm(false, false, out, in, r, 1, up.Data, r, down.Data, in, 0, dst, in)
	case AlgoLoHa:
		tp := getScratch(len(dst))
		defer putScratch(tp)
		tmp := *tp
		if m.Tucker {
			// ΔW1[o,c,y,x] = Σ_{i,j} t1[i,j,y,x]·w1a[i,o]·w1b[j,c], same for 2, then ⊙
			rebuildTucker(fs[PartHadaT1], transpose(fs[PartHadaW1A]), fs[PartHadaW1B].Data, out, w[1], dst)
			rebuildTucker(fs[PartHadaT2], transpose(fs[PartHadaW2A]), fs[PartHadaW2B].Data, out, w[1], tmp)
		} else {
			// ΔW = (w1a @ w1b) ⊙ (w2a @ w2b)      [out, r] @ [r, in*kh*kw]
			r1, r2 := fs[PartHadaW1B].Shape[0], fs[PartHadaW2B].Shape[0]
			nn.Gemm(false, false, out, in, r1, 1, fs[PartHadaW1A].Data, r1, fs[PartHadaW1B].Data, in, 0, dst, in)
			nn.Gemm(false, false, out, in, r2, 1, fs[PartHadaW2A].Data, r2, fs[PartHadaW2B].Data, in, 0, tmp, in)
		}
		for i := range dst {
			dst[i] *= tmp[i]
		}
	case AlgoLoKr:
		w1, a, c := lokrW1(fs)
		w2, b, d := lokrW2(fs, m.Tucker)
		kron(w1, a, c, w2, b, d, dst)
	case AlgoGLoRA:
		gloraDelta(fs, m.gloraOld, m.Rank, w, cur, dst)
	default:
		return fmt.Errorf("%w: %s module %q: no ΔW for %s", ErrUnsupported, f.Path, m.Name, m.Algo)
	}
	return nil
}

// rebuildTucker computes dst[o,c,k] = Σ_{i,j} a[o,i]·t[i,j,k]·b[j,c] for a
// Tucker core t [ri, rj, kh, kw], a [out, ri], b [rj, in]; dst is
// [out, in, kh*kw] (LyCORIS functional/general.py rebuild_tucker, A1111
// lyco_helpers.rebuild_cp_decomposition).
func rebuildTucker(t *nn.Tensor, a, b []float32, out, in int, dst []float32) {
	ri, rj := t.Shape[0], t.Shape[1]
	k := t.Shape[2] * t.Shape[3]
	// t1[o, j, k] = Σ_i a[o,i]·t[i, j, k]            [out, ri] @ [ri, rj*k]
	t1 := make([]float32, out*rj*k)
	nn.Gemm(false, false, out, rj*k, ri, 1, a, ri, t.Data, rj*k, 0, t1, rj*k)
	// dst[o] = bᵀ @ t1[o]                            [in, rj] @ [rj, k]
	for o := 0; o < out; o++ {
		nn.Gemm(true, false, in, k, rj, 1, b, in, t1[o*rj*k:(o+1)*rj*k], k, 0, dst[o*in*k:(o+1)*in*k], k)
	}
}

// transpose returns the data of a 2-D tensor transposed: [r, n] -> [n, r].
func transpose(t *nn.Tensor) []float32 {
	r, n := t.Shape[0], t.Shape[1]
	out := make([]float32, r*n)
	for i := 0; i < r; i++ {
		for j := 0; j < n; j++ {
			out[j*r+i] = t.Data[i*n+j]
		}
	}
	return out
}

// lokrW1 returns W1 [a, c] = lokr_w1 or lokr_w1_a @ lokr_w1_b.
func lokrW1(fs map[Part]*nn.Tensor) ([]float32, int, int) {
	if t, ok := fs[PartLokrW1]; ok {
		return t.Data, t.Shape[0], t.Shape[1]
	}
	wa, wb := fs[PartLokrW1A], fs[PartLokrW1B]
	a, r, c := wa.Shape[0], wa.Shape[1], wb.Shape[1]
	w := make([]float32, a*c)
	nn.Gemm(false, false, a, c, r, 1, wa.Data, r, wb.Data, c, 0, w, c) // [a, r] @ [r, c]
	return w, a, c
}

// lokrW2 returns W2 flattened to [b, d*kh*kw]: lokr_w2, lokr_w2_a @ lokr_w2_b,
// or the Tucker rebuild W2[p,q,y,x] = Σ_{i,j} t2[i,j,y,x]·w2a[i,p]·w2b[j,q].
func lokrW2(fs map[Part]*nn.Tensor, tucker bool) ([]float32, int, int) {
	if t, ok := fs[PartLokrW2]; ok {
		return t.Data, t.Shape[0], len(t.Data) / t.Shape[0]
	}
	wa, wb := fs[PartLokrW2A], fs[PartLokrW2B]
	if tucker {
		t := fs[PartLokrT2]
		b, d := wa.Shape[1], wb.Shape[1]
		k := t.Shape[2] * t.Shape[3]
		w := make([]float32, b*d*k)
		rebuildTucker(t, transpose(wa), wb.Data, b, d, w)
		return w, b, d * k
	}
	b, r := wa.Shape[0], wa.Shape[1]
	n := len(wb.Data) / r
	w := make([]float32, b*n)
	nn.Gemm(false, false, b, n, r, 1, wa.Data, r, wb.Data, n, 0, w, n) // [b, r] @ [r, d*kh*kw]
	return w, b, n
}

// kron writes the Kronecker product of w1 [a, c] and w2 [b, n] into dst
// [a*b, c*n]: dst[i*b+p, j*n+q] = w1[i,j]·w2[p,q]. With n = d*kh*kw this is
// torch.kron(w1[:, :, None, None], w2) flattened to [a*b, c*d*kh*kw].
func kron(w1 []float32, a, c int, w2 []float32, b, n int, dst []float32) {
	cols := c * n
	for i := 0; i < a; i++ {
		for p := 0; p < b; p++ {
			row := dst[(i*b+p)*cols : (i*b+p+1)*cols]
			src := w2[p*n : (p+1)*n]
			for j := 0; j < c; j++ {
				v := w1[i*c+j]
				seg := row[j*n : (j+1)*n]
				for q, x := range src {
					seg[q] = v * x
				}
			}
		}
	}
}
