// apply.go applies one planned module to a float32 weight in place (spec
// §8, §8.1, §10.4): the additive form W' = W + m·s·ΔW, DoRA's re-normalised
// blend, (IA)^3's row/column scaling, full/norm differences and OFT's
// rotation (oft.go).
//
// It works on the flattened [out, in*kh*kw] buffer only; it neither casts to
// a storage dtype nor knows where the weight lives (plan.go hands it a
// float32 copy). Plan.ApplyFrom is the one-pass variant: it widens the
// original into the destination block by block and patches each block while
// it is in cache; it does not read the stored bytes itself (the caller's
// widen does).
package lora

import (
	"fmt"
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

// fusedBlockBytes is the float32 block ApplyFrom widens and patches at a
// time: small enough to stay in a core's L2 between the two steps, large
// enough that re-packing the LoRA down factor per block stays cheap.
const fusedBlockBytes = 1 << 20

// ApplyFrom computes the merged float32 tensor of key into dst from its
// original values, which widen supplies: widen(lo, hi) writes the original
// values of elements [lo, hi) into dst[lo:hi]. When every op is row-local
// (plain LoRA, bias and full/norm differences: attention LoRAs) it goes
// through dst once, in blocks of rows widened and patched while in cache;
// otherwise it widens all of dst, then applies the ops as Apply does. The
// result equals Apply(key, original, dst) for a given op kind and shape
// (blocks are fixed by the shape, so it is deterministic).
func (p *Plan) ApplyFrom(key string, dst []float32, widen func(lo, hi int) error) error {
	t, ok := p.targets[key]
	if !ok {
		return fmt.Errorf("lora: %q is not touched by this plan", key)
	}
	n := numel(t.Shape)
	if len(dst) != n {
		return fmt.Errorf("lora: %q holds %d values (shape %v), got dst %d", key, n, t.Shape, len(dst))
	}
	local := len(t.Shape) > 0 && t.Shape[0] > 0
	for i := range t.Ops {
		local = local && t.Ops[i].rowLocal()
	}
	if !local {
		if err := widen(0, n); err != nil {
			return err
		}
		return p.Apply(key, dst, dst)
	}
	fss := make([]map[Part]*nn.Tensor, len(t.Ops))
	for i := range t.Ops {
		fs, err := t.Ops[i].file.load(t.Ops[i].mod)
		if err != nil {
			return fmt.Errorf("lora: %s: %w", key, err)
		}
		fss[i] = fs
	}
	rows := t.Shape[0]
	rowLen := n / rows
	block := max(24, fusedBlockBytes/(4*max(rowLen, 1))/24*24) // rows, a multiple of the gemm tile
	for r0 := 0; r0 < rows; r0 += block {
		r1 := min(rows, r0+block)
		if err := widen(r0*rowLen, r1*rowLen); err != nil {
			return err
		}
		for i := range t.Ops {
			t.Ops[i].applyRows(fss[i], dst, rowLen, r0, r1)
		}
	}
	return nil
}

// rowLocal reports whether the op changes each output row from that row
// alone (so applyRows on row blocks equals apply on the whole).
func (o *Op) rowLocal() bool {
	if o.padIn > 0 {
		return false
	}
	if o.bias {
		return true
	}
	switch o.mod.Algo {
	case AlgoFull, AlgoNorm:
		return true
	case AlgoLoRA:
		return !o.mod.Tucker && !o.mod.DoRA
	}
	return false
}

// applyRows is apply restricted to rows [r0, r1) of w (rows of rowLen
// values) for a rowLocal op whose factors fs are loaded.
func (o *Op) applyRows(fs map[Part]*nn.Tensor, w []float32, rowLen, r0, r1 int) {
	lo, hi := r0*rowLen, r1*rowLen
	var src []float32
	switch {
	case o.bias:
		src = factor(fs, PartDiffB, PartBNorm)
	case o.mod.Algo == AlgoFull || o.mod.Algo == AlgoNorm:
		src = factor(fs, PartDiff, PartWNorm)
	default:
		// rows of W += m·s·(up @ down)  [r1-r0, r] @ [r, rowLen]
		up, down := fs[PartUp], fs[PartDown]
		r := down.Shape[0]
		nn.Gemm(false, false, r1-r0, rowLen, r, float32(o.Strength*o.Scale), up.Data[r0*r:], r, down.Data, rowLen, 1, w[lo:], rowLen)
		return
	}
	if lo < len(src) { // as apply: a shorter source covers a prefix
		axpy(float32(o.Strength), src[lo:min(hi, len(src))], w[lo:hi])
	}
}
