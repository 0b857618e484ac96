// check.go validates, from shapes alone, that one adapter module fits the
// checkpoint module it resolved to (spec §10.1 step 2): the final ΔW shape
// of every algorithm, numel and the output axis, before anything is written.
// Rank (4-D vs 2-D) is not compared: a linear LoRA may patch a 1x1 conv
// stored [out,in,1,1] and the reverse (kohya merge_lora.py squeezes).
//
// It reads no tensor data and does no maths (delta.go, apply.go).
package lora

import (
	"fmt"
	"slices"
)

// binding is how a module patches a checkpoint module once checked.
type binding struct {
	weight bool    // patches <module>.weight
	bias   bool    // patches <module>.bias (diff_b, b_norm)
	doraIn bool    // DoRA magnitude along the input axis (LyCORIS 2.2-3.1)
	padIn  int     // inpainting conv_in: ΔW covers the first padIn input channels
	scale  float64 // s (alpha/rank, ...), without the strength
}

func numel(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// onlyOnes reports whether every dimension of s from index i on is 1.
func onlyOnes(s []int, i int) bool {
	for _, d := range s[min(i, len(s)):] {
		if d != 1 {
			return false
		}
	}
	return true
}

// check validates m against the checkpoint module cm.
func (f *File) check(m *Module, cm *CkptModule) (binding, error) {
	b := binding{scale: f.scaleOf(m)}
	w := cm.Weight
	sh := m.Shape
	fail := func(p Part, format string, args ...any) (binding, error) {
		key := m.Keys[p]
		return binding{}, fmt.Errorf("%w: %s tensor %q %v vs checkpoint %q %v: %s", ErrShape, f.Path, key, sh[p],
			cm.Name+".weight", w, fmt.Sprintf(format, args...))
	}
	needWeight := func() error {
		if len(w) < 2 || numel(w) == 0 {
			return fmt.Errorf("%w: %s module %q targets %q, which has no 2-D or 4-D weight (shape %v)", ErrShape, f.Path, m.Name, cm.Name, w)
		}
		return nil
	}
	switch m.Algo {
	case AlgoFull, AlgoNorm:
		wp, bp := PartDiff, PartDiffB
		if m.Algo == AlgoNorm {
			wp, bp = PartWNorm, PartBNorm
		}
		if s, ok := sh[wp]; ok {
			if w == nil || numel(s) != numel(w) {
				return fail(wp, "element counts differ")
			}
			b.weight = true
		}
		if s, ok := sh[bp]; ok {
			if cm.Bias == nil || numel(s) != numel(cm.Bias) {
				return binding{}, fmt.Errorf("%w: %s tensor %q %v vs checkpoint %q %v: element counts differ", ErrShape, f.Path, m.Keys[bp], s, cm.Name+".bias", cm.Bias)
			}
			b.bias = true
		}
		return b, nil
	case AlgoIA3:
		if err := needWeight(); err != nil {
			return binding{}, err
		}
		want := w[0]
		if m.OnIn {
			want = w[1]
		}
		if numel(sh[PartIA3Weight]) != want {
			return fail(PartIA3Weight, "an (IA)^3 vector with on_input=%v needs %d values", m.OnIn, want)
		}
		b.weight = true
		return b, nil
	}
	if err := needWeight(); err != nil {
		return binding{}, err
	}
	out := w[0]
	in := numel(w) / out // flattened [out, in*kh*kw]
	switch m.Algo {
	case AlgoOFT:
		if m.has(PartRescale) {
			return binding{}, fmt.Errorf("%w: %s module %q: OFT with a rescale vector", ErrUnsupported, f.Path, m.Name)
		}
		if err := checkOFT(m, w); err != nil {
			return fail(PartOFTBlocks, "%v", err)
		}
		b.weight = true
		return b, nil
	case AlgoGLoRA:
		if err := checkGLoRA(m, w); err != nil {
			return fail(PartGLoRAA1, "%v", err)
		}
	case AlgoLoRA:
		up, down := sh[PartUp], sh[PartDown]
		if len(up) < 2 || !onlyOnes(up, 2) {
			return fail(PartUp, "up must be [out, r] or [out, r, 1, 1]")
		}
		if len(down) < 2 {
			return fail(PartDown, "down must be at least 2-D")
		}
		if up[0] != out {
			return fail(PartUp, "up has %d output rows, the weight %d", up[0], out)
		}
		if m.Tucker {
			mid := sh[PartMid]
			if len(w) != 4 || len(mid) != 4 || mid[0] != up[1] || mid[1] != down[0] || mid[2] != w[2] || mid[3] != w[3] ||
				numel(down) != down[0]*w[1] || !onlyOnes(down, 2) {
				return fail(PartMid, "Tucker LoCon needs mid [r_up, r_down, kh, kw] = [%d, %d, %d, %d] and down [r, in, 1, 1] for a 4-D weight",
					up[1], down[0], dim(w, 2), dim(w, 3))
			}
			return b.withDoRA(f, m, cm)
		}
		if up[1] != down[0] {
			return fail(PartUp, "up rank %d differs from down rank %d", up[1], down[0])
		}
		if numel(down)/down[0] != in {
			return fail(PartDown, "down covers %d inputs, the weight %d (in*kh*kw)", numel(down)/down[0], in)
		}
	case AlgoLoHa:
		for _, pr := range [][3]Part{{PartHadaW1A, PartHadaW1B, PartHadaT1}, {PartHadaW2A, PartHadaW2B, PartHadaT2}} {
			a, bb := sh[pr[0]], sh[pr[1]]
			if len(a) != 2 || len(bb) < 2 {
				return fail(pr[0], "LoHa factors must be 2-D")
			}
			if m.Tucker {
				t := sh[pr[2]]
				if len(w) != 4 || len(t) != 4 || t[0] != a[0] || t[1] != bb[0] || a[1] != out || numel(bb) != bb[0]*w[1] ||
					t[2] != w[2] || t[3] != w[3] {
					return fail(pr[2], "LoHa CP needs t [r, r, kh, kw], w_a [r, out], w_b [r, in] for a 4-D weight")
				}
				continue
			}
			if a[0] != out || a[1] != bb[0] || numel(bb)/bb[0] != in {
				return fail(pr[0], "LoHa needs w_a [out, r] and w_b [r, in*kh*kw] = [%d, r] and [r, %d]", out, in)
			}
		}
	case AlgoLoKr:
		w1r, w1c, err := lokrW1Dims(sh)
		if err != nil {
			return fail(PartLokrW1, "%v", err)
		}
		w2r, w2c, err := lokrW2Dims(sh, m.Tucker)
		if err != nil {
			return fail(PartLokrW2, "%v", err)
		}
		if w1r*w2r != out || w1c*w2c != in {
			return fail(PartLokrW1, "kron of [%d, %d] and [%d, %d] gives [%d, %d], the weight is [%d, %d] flattened",
				w1r, w1c, w2r, w2c, w1r*w2r, w1c*w2c, out, in)
		}
		if m.Tucker {
			t := sh[PartLokrT2]
			if len(w) != 4 || t[2] != w[2] || t[3] != w[3] {
				return fail(PartLokrT2, "LoKr Tucker needs a 4-D weight with the kernel of lokr_t2")
			}
		}
	default:
		return binding{}, fmt.Errorf("%w: %s module %q: algorithm %s", ErrUnsupported, f.Path, m.Name, m.Algo)
	}
	return b.withDoRA(f, m, cm)
}

// withDoRA marks the weight as patched and checks the DoRA magnitude's axis:
// [out], [out,1(,1,1)] is the output axis; [1,in(,1,1)] the input axis
// (spec §8.1). A 1-D vector (PEFT lora_magnitude_vector) is the output axis.
func (b binding) withDoRA(f *File, m *Module, cm *CkptModule) (binding, error) {
	b.weight = true
	if !m.DoRA {
		return b, nil
	}
	p := PartDoRA
	if m.has(PartMagnitude) {
		p = PartMagnitude
	}
	s, w := m.Shape[p], cm.Weight
	switch {
	case len(s) == 1 && s[0] == w[0]:
	case len(s) >= 2 && s[0] == w[0] && onlyOnes(s, 1):
	case len(s) >= 2 && s[0] == 1 && s[1] == w[1] && onlyOnes(s, 2):
		b.doraIn = true
	default:
		return binding{}, fmt.Errorf("%w: %s tensor %q %v vs checkpoint %q %v: a DoRA magnitude must be [out], [out, 1, ...] or [1, in, ...]",
			ErrShape, f.Path, m.Keys[p], s, cm.Name+".weight", slices.Clone(w))
	}
	return b, nil
}

// lokrW1Dims returns the 2-D shape of W1 = lokr_w1 or w1_a @ w1_b.
func lokrW1Dims(sh map[Part][]int) (rows, cols int, err error) {
	if s, ok := sh[PartLokrW1]; ok {
		if len(s) < 2 || !onlyOnes(s, 2) {
			return 0, 0, fmt.Errorf("lokr_w1 %v must be 2-D", s)
		}
		return s[0], s[1], nil
	}
	a, b := sh[PartLokrW1A], sh[PartLokrW1B]
	if len(a) != 2 || len(b) < 2 || a[1] != b[0] || !onlyOnes(b, 2) {
		return 0, 0, fmt.Errorf("lokr_w1_a %v and lokr_w1_b %v must be [a, r] and [r, c]", a, b)
	}
	return a[0], b[1], nil
}

// lokrW2Dims returns W2 flattened to [b, d*kh*kw].
func lokrW2Dims(sh map[Part][]int, tucker bool) (rows, cols int, err error) {
	if s, ok := sh[PartLokrW2]; ok {
		if len(s) < 2 {
			return 0, 0, fmt.Errorf("lokr_w2 %v must be at least 2-D", s)
		}
		return s[0], numel(s) / s[0], nil
	}
	a, b := sh[PartLokrW2A], sh[PartLokrW2B]
	if tucker {
		t := sh[PartLokrT2]
		if len(t) != 4 || len(a) != 2 || len(b) != 2 || t[0] != a[0] || t[1] != b[0] {
			return 0, 0, fmt.Errorf("LoKr Tucker needs lokr_t2 [r, r, kh, kw], lokr_w2_a [r, b], lokr_w2_b [r, d]; got %v, %v, %v", t, a, b)
		}
		return a[1], b[1] * t[2] * t[3], nil
	}
	if len(a) != 2 || len(b) < 2 || a[1] != b[0] {
		return 0, 0, fmt.Errorf("lokr_w2_a %v and lokr_w2_b %v must be [b, r] and [r, d(, kh, kw)]", a, b)
	}
	return a[0], numel(b) / b[0], nil
}

// scaleOf is the module's s: an explicit .scale tensor, else alpha/rank,
// else the PEFT config's lora_alpha/r, else 1. (IA)^3, full, norm and OFT
// modules have no scale (OFT's alpha is a norm constraint).
func (f *File) scaleOf(m *Module) float64 {
	switch m.Algo {
	case AlgoIA3, AlgoFull, AlgoNorm, AlgoOFT:
		return 1
	}
	if m.HasS {
		return m.Scale
	}
	if m.HasA {
		if m.Rank <= 0 {
			return 1 // LoKr with neither side decomposed (LyCORIS stores alpha = r anyway)
		}
		return m.Alpha / float64(m.Rank)
	}
	if s, ok := f.peft.peftScale(m.Name, m.Rank); ok {
		return s
	}
	return 1
}
