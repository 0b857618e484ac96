// apply.go applies one planned module to a float32 weight in place (spec
// §8, §8.1, §10.4): the additive form W' = W + m·s·ΔW, DoRA's re-normalised
// blend, (IA)^3's row/column scaling, full/norm differences and OFT's
// rotation (oft.go).
//
// It works on the flattened [out, in*kh*kw] buffer only; it neither casts to
// a storage dtype nor knows where the weight lives (plan.go hands it a
// float32 copy).
package lora

import (
	"math"
	"math/bits"
	"sync"

	"github.com/sdbridge/sdbridge/nn"
)

// doraEps is added to the DoRA norm: float32 machine epsilon, as LyCORIS
// and ComfyUI add torch.finfo(float32).eps.
const doraEps = 1.1920928955078125e-07

// scratchPools hold float32 buffers by power-of-two capacity class, so a
// 1280x1280 merge never takes a 320x320 buffer (Apply may run concurrently).
var scratchPools [48]sync.Pool

// getScratch returns a buffer of n values; give it back with putScratch.
func getScratch(n int) *[]float32 {
	c := bits.Len(uint(max(n-1, 0)))
	if p, ok := scratchPools[c].Get().(*[]float32); ok {
		*p = (*p)[:n]
		return p
	}
	s := make([]float32, n, 1<<c)
	return &s
}

func putScratch(p *[]float32) { scratchPools[bits.Len(uint(cap(*p)-1))].Put(p) }

// apply runs one op on w (the current weight, flattened) of shape shape.
func (o *Op) apply(shape []int, w []float32) error {
	f, m := o.file, o.mod
	fs, err := f.load(m)
	if err != nil {
		return err
	}
	if o.bias {
		src := factor(fs, PartDiffB, PartBNorm)
		if src == nil {
			return nil
		}
		axpy(float32(o.Strength), src, w)
		return nil
	}
	switch m.Algo {
	case AlgoFull, AlgoNorm:
		// W' = W + m·diff
		if src := factor(fs, PartDiff, PartWNorm); src != nil {
			axpy(float32(o.Strength), src, w)
		}
		return nil
	case AlgoIA3:
		o.applyIA3(shape, w, factor(fs, PartIA3Weight))
		return nil
	case AlgoOFT:
		applyOFT(m, factor(fs, PartOFTBlocks), o.Strength, shape, w)
		return nil
	}
	if m.Algo == AlgoLoRA && !m.Tucker && !m.DoRA {
		// W += m·s·(up @ down) in one gemm, no ΔW buffer.  [out, r] @ [r, in*kh*kw]
		up, down := fs[PartUp], fs[PartDown]
		out, r := shape[0], down.Shape[0]
		in := len(w) / out
		nn.Gemm(false, false, out, in, r, float32(o.Strength*o.Scale), up.Data, r, down.Data, in, 1, w, in)
		return nil
	}
	dp := getScratch(len(w))
	defer putScratch(dp)
	d := *dp
	if err := f.delta(m, shape, w, d); err != nil {
		return err
	}
	if !m.DoRA {
		// W' = W + m·s·ΔW
		axpy(float32(o.Strength*o.Scale), d, w)
		return nil
	}
	o.applyDoRA(shape, w, d, factor(fs, PartDoRA, PartMagnitude))
	return nil
}

// factor returns the loaded data of the first present part.
func factor(fs map[Part]*nn.Tensor, parts ...Part) []float32 {
	for _, p := range parts {
		if t, ok := fs[p]; ok {
			return t.Data
		}
	}
	return nil
}

// axpy does y += a·x.
func axpy(a float32, x, y []float32) {
	y = y[:len(x)]
	for i, v := range x {
		y[i] += a * v
	}
}

// applyIA3: W' = W ⊙ (1 + m·v); v [out] scales rows, or v [in] scales the
// input channels (every kh*kw tap) when on_input is set (A1111 network_ia3.py).
func (o *Op) applyIA3(shape []int, w, v []float32) {
	m := float32(o.Strength)
	out := shape[0]
	rowLen := len(w) / out
	if !o.mod.OnIn {
		for r := 0; r < out; r++ {
			g := 1 + m*v[r]
			row := w[r*rowLen : (r+1)*rowLen]
			for i := range row {
				row[i] *= g
			}
		}
		return
	}
	in := shape[1]
	k := rowLen / in
	for r := 0; r < out; r++ {
		for c := 0; c < in; c++ {
			g := 1 + m*v[c]
			seg := w[r*rowLen+c*k : r*rowLen+(c+1)*k]
			for i := range seg {
				seg[i] *= g
			}
		}
	}
}

// applyDoRA implements the project rule of spec §8.1 on w with ΔW d:
//
//	Wc = W + s·ΔW;  n = ‖Wc‖ per output row (or per input column);
//	Wd = magnitude ⊙ Wc / (n + eps);  W' = W + m·(Wd − W)
//
// d is overwritten with Wc.
func (o *Op) applyDoRA(shape []int, w, d, mag []float32) {
	s, m := float32(o.Scale), float32(o.Strength)
	for i := range d {
		d[i] = w[i] + s*d[i] // Wc
	}
	out := shape[0]
	rowLen := len(w) / out
	blend := func(i int, g float32) { w[i] += m * (g*d[i] - w[i]) }
	if !o.doraIn {
		for r := 0; r < out; r++ {
			row := d[r*rowLen : (r+1)*rowLen]
			var ss float64
			for _, x := range row {
				ss += float64(x) * float64(x)
			}
			g := mag[r] / float32(math.Sqrt(ss)+doraEps)
			for i := r * rowLen; i < (r+1)*rowLen; i++ {
				blend(i, g)
			}
		}
		return
	}
	in := shape[1]
	k := rowLen / in
	norms := make([]float64, in)
	for r := 0; r < out; r++ {
		for c := 0; c < in; c++ {
			for _, x := range d[r*rowLen+c*k : r*rowLen+(c+1)*k] {
				norms[c] += float64(x) * float64(x)
			}
		}
	}
	g := make([]float32, in)
	for c := range g {
		g[c] = mag[c] / float32(math.Sqrt(norms[c])+doraEps)
	}
	for r := 0; r < out; r++ {
		for c := 0; c < in; c++ {
			for i := r*rowLen + c*k; i < r*rowLen+(c+1)*k; i++ {
				blend(i, g[c])
			}
		}
	}
}
