// glora.go implements GLoRA (spec §8): ΔW depends on the weight it patches,
// so it runs on the current buffer in adapter order (spec §10.4).
//
//	current LyCORIS: a1 [in, r], a2 [r, in], b1 [out, r], b2 [r, in*kh*kw]
//	    ΔW = W ×_in a1 ×_in a2 + b1 @ b2     (convs contract the input-channel axis)
//	old (A1111's only form): a1 [r, D], a2 [D, r], b1 [r, D], b2 [out, r], D = in*kh*kw
//	    ΔW = b2 @ b1 + (W.flatten(1) @ a2) @ a1
//
// The forms are told apart by shape; when both fit (square layers) the
// current form wins (the project rule; ComfyUI weight_adapter/glora.py has
// a tie heuristic instead). s = alpha / r. It does not do bypass (runtime)
// GLoRA.
package lora

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// flat2 views a shape as 2-D [shape[0], rest].
func flat2(s []int) (int, int) {
	if len(s) == 0 || s[0] == 0 {
		return 0, 0
	}
	return s[0], numel(s) / s[0]
}

// gloraForm detects the form and rank from the four factor shapes alone.
func gloraForm(sh map[Part][]int) (old bool, rank int, err error) {
	a1r, a1c := flat2(sh[PartGLoRAA1])
	a2r, a2c := flat2(sh[PartGLoRAA2])
	b1r, b1c := flat2(sh[PartGLoRAB1])
	b2r, b2c := flat2(sh[PartGLoRAB2])
	isNew := a1c == a2r && a2r == b1c && b1c == b2r && a2r > 0
	isOld := a1r == a2c && a2c == b1r && b1r == b2c && a1r > 0
	switch {
	case isNew:
		return false, a2r, nil
	case isOld:
		return true, a1r, nil
	}
	return false, 0, fmt.Errorf("GLoRA factors a1 %v, a2 %v, b1 %v, b2 %v fit neither form",
		sh[PartGLoRAA1], sh[PartGLoRAA2], sh[PartGLoRAB1], sh[PartGLoRAB2])
}

// checkGLoRA validates the factors against the weight shape w.
func checkGLoRA(m *Module, w []int) error {
	out := w[0]
	d := numel(w) / out
	in := w[1]
	sh := m.Shape
	r := m.Rank
	a1r, a1c := flat2(sh[PartGLoRAA1])
	a2r, a2c := flat2(sh[PartGLoRAA2])
	b1r, b1c := flat2(sh[PartGLoRAB1])
	b2r, b2c := flat2(sh[PartGLoRAB2])
	if m.gloraOld {
		if a1r != r || a1c != d || a2r != d || a2c != r || b1r != r || b1c != d || b2r != out || b2c != r {
			return fmt.Errorf("old-form GLoRA needs a1 [r, %d], a2 [%d, r], b1 [r, %d], b2 [%d, r]", d, d, d, out)
		}
		return nil
	}
	if a1r != in || a1c != r || a2r != r || a2c != in || b1r != out || b1c != r || b2r != r || b2c != d {
		return fmt.Errorf("GLoRA needs a1 [%d, r], a2 [r, %d], b1 [%d, r], b2 [r, %d]", in, in, out, d)
	}
	return nil
}

// gloraDelta writes ΔW for the current weight cur (shape w) into dst.
func gloraDelta(fs map[Part]*nn.Tensor, old bool, r int, w []int, cur, dst []float32) {
	a1, a2, b1, b2 := fs[PartGLoRAA1].Data, fs[PartGLoRAA2].Data, fs[PartGLoRAB1].Data, fs[PartGLoRAB2].Data
	out := w[0]
	d := len(dst) / out
	if old {
		// ΔW = b2 @ b1 + (W @ a2) @ a1        [out, r] @ [r, D]; [out, D] @ [D, r] @ [r, D]
		nn.Gemm(false, false, out, d, r, 1, b2, r, b1, d, 0, dst, d)
		t := make([]float32, out*r) // [out, r]
		nn.Gemm(false, false, out, r, d, 1, cur, d, a2, r, 0, t, r)
		nn.Gemm(false, false, out, d, r, 1, t, r, a1, d, 1, dst, d)
		return
	}
	in := w[1]
	k := d / in
	// einsum("o i k, i j -> o j k", W, a1), then with a2, one output row at a time:
	// t = a1ᵀ @ W[o]  [r, in] @ [in, k];  ΔW[o] = a2ᵀ @ t  [in, r] @ [r, k]
	t := make([]float32, r*k)
	for o := 0; o < out; o++ {
		nn.Gemm(true, false, r, k, in, 1, a1, r, cur[o*d:(o+1)*d], k, 0, t, k)
		nn.Gemm(true, false, in, k, r, 1, a2, in, t, k, 0, dst[o*d:(o+1)*d], k)
	}
	// ΔW += b1 @ b2                            [out, r] @ [r, in*kh*kw]
	nn.Gemm(false, false, out, d, r, 1, b1, r, b2, d, 1, dst, d)
}
