// cuda_text.go: the GPU ops only the text models need (CLIP, T5 and ELLA's
// connector), twins of CPU code in nn and models: token embedding gather
// (+ position embedding), T5's RMSNorm, the feed-forward activations in
// place (optionally times a gate, T5's gated FF), ELLA's AdaLayerNorm
// modulation (with or without the non-affine layer norm), the broadcast
// add of per-item rows to a shared [Q, W] block, and a dtype cast. Each
// runs the kernel of cuda/kernels/text.cu in its inputs' storage dtype
// (fp32 arithmetic) and returns tensors of that dtype, whatever g.DType.
// It does not hold attention (AttentionOpts in cuda_attention.go serves
// CLIP's causal and T5's biased, unscaled attention) or the models' layer
// wiring (models/*_cuda.go).
package nn

import (
	"fmt"

	"github.com/sdbridge/sdbridge/cuda"
)

// TextAct is an activation of the text models' feed-forward layers, in
// the numbering text.cu uses.
type TextAct int

const (
	TextReLU        TextAct = iota // max(x, 0) (T5 "relu")
	TextGELU                       // exact erf GELU (nn.GELU)
	TextGELUTanh                   // tanh approximation (nn.GELUTanh; T5 "gelu_new")
	TextQuickGELU                  // x*sigmoid(1.702x) (nn.QuickGELU; OpenAI CLIP)
	TextSiLU                       // x*sigmoid(x) (nn.SiLU)
	TextSquaredReLU                // relu(x)^2 (ELLA's MLP)
)

// String names the activation as model configs do.
func (a TextAct) String() string {
	switch a {
	case TextReLU:
		return "relu"
	case TextGELU:
		return "gelu"
	case TextGELUTanh:
		return "gelu_new"
	case TextQuickGELU:
		return "quick_gelu"
	case TextSiLU:
		return "silu"
	case TextSquaredReLU:
		return "squared_relu"
	}
	return fmt.Sprintf("TextAct(%d)", int(a))
}

// textLaunch runs kernel op of text.cu, in the dtype of t, over grid with
// cudaBlock threads and shmem bytes of dynamic shared memory.
func (g *GPU) textLaunch(op string, t *GPUTensor, grid cuda.Dim3, shmem int, args ...any) error {
	if g.Dev == nil {
		return fmt.Errorf("nn: cuda %s: no device", op)
	}
	name := t.DType.kernel(op)
	f, err := g.Dev.Kernel("text.cu", name)
	if err != nil {
		return fmt.Errorf("nn: cuda %s: %w", name, err)
	}
	if err := f.Launch(grid, cuda.Dim3{X: cudaBlock}, shmem, args...); err != nil {
		return fmt.Errorf("nn: cuda %s: %w", name, err)
	}
	return nil
}

// sameDType reports an error naming op when the tensors' dtypes differ
// (nil tensors are skipped).
func sameDType(op string, ts ...*GPUTensor) error {
	var first *GPUTensor
	for _, t := range ts {
		if t == nil {
			continue
		}
		if first == nil {
			first = t
			continue
		}
		if t.DType != first.DType {
			return fmt.Errorf("nn: cuda %s: mixed dtypes (%s and %s)", op, first.DType, t.DType)
		}
	}
	return nil
}

// Embedding gathers rows of table [V, C] for token ids [B][L] (every row
// of the same length, ids in [0, V)) and adds row i of pos [P >= L, C] to
// position i when pos is not nil (CLIP's token + position embeddings;
// T5 passes nil). Returns [B, L, C].
func (g *GPU) Embedding(table *GPUTensor, ids [][]int, pos *GPUTensor) (*GPUTensor, error) {
	if len(table.Shape) != 2 {
		return nil, fmt.Errorf("nn: cuda Embedding: table %v is not [V, C]", table.Shape)
	}
	v, c := table.Shape[0], table.Shape[1]
	if len(ids) == 0 || len(ids[0]) == 0 {
		return nil, fmt.Errorf("nn: cuda Embedding: no token ids")
	}
	b, l := len(ids), len(ids[0])
	if pos != nil && (len(pos.Shape) != 2 || pos.Shape[1] != c || pos.Shape[0] < l) {
		return nil, fmt.Errorf("nn: cuda Embedding: position table %v for %d positions of width %d", pos.Shape, l, c)
	}
	if err := sameDType("Embedding", table, pos); err != nil {
		return nil, err
	}
	flat := make([]byte, 4*b*l) // [B*L] int32, little endian
	for n, row := range ids {
		if len(row) != l {
			return nil, fmt.Errorf("nn: cuda Embedding: row %d has %d ids, row 0 has %d", n, len(row), l)
		}
		for i, id := range row {
			if id < 0 || id >= v {
				return nil, fmt.Errorf("nn: cuda Embedding: id %d at [%d][%d] outside the table (%d rows)", id, n, i, v)
			}
			k := 4 * (n*l + i)
			flat[k], flat[k+1], flat[k+2], flat[k+3] = byte(id), byte(id>>8), byte(id>>16), byte(id>>24)
		}
	}
	idBuf, err := g.Dev.Alloc(len(flat))
	if err != nil {
		return nil, fmt.Errorf("nn: cuda Embedding ids: %w", err)
	}
	defer idBuf.Free()
	if err := idBuf.UploadBytes(flat); err != nil {
		return nil, fmt.Errorf("nn: cuda Embedding ids: %w", err)
	}
	y, err := g.emptyLike(table, b, l, c) // [B, L, C]
	if err != nil {
		return nil, err
	}
	if err := g.textLaunch("embed_rows", table, gridFor(b*l*c), 0, table.Buf, idBuf, bufOf(pos), y.Buf, b*l, l, c); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// RMSNorm is T5LayerNorm: w * (x / sqrt(mean(x^2) + eps)) over the last
// axis of x [..., D], w [D]; returns a new tensor.
func (g *GPU) RMSNorm(x, w *GPUTensor, eps float32) (*GPUTensor, error) {
	d := x.Shape[len(x.Shape)-1]
	if w.Numel() != d {
		return nil, fmt.Errorf("nn: cuda RMSNorm: weight %v for input %v", w.Shape, x.Shape)
	}
	if err := sameDType("RMSNorm", x, w); err != nil {
		return nil, err
	}
	y, err := g.emptyLike(x, x.Shape...) // same shape as x
	if err != nil {
		return nil, err
	}
	if err := g.textLaunch("rms_norm", x, cuda.Dim3{X: uint32(x.Numel() / d)}, 0, x.Buf, w.Buf, y.Buf, d, eps); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// Activate applies act to x in place.
func (g *GPU) Activate(x *GPUTensor, act TextAct) error {
	n := x.Numel()
	return g.textLaunch("text_activate", x, gridFor(n), 0, x.Buf, (*cuda.Buffer)(nil), int64(n), int(act))
}

// GatedActivate sets x = act(x) * gate in place (T5's gated feed-forward:
// act(wi_0 h) * wi_1 h); gate has x's size.
func (g *GPU) GatedActivate(x, gate *GPUTensor, act TextAct) error {
	n := x.Numel()
	if gate.Numel() != n {
		return fmt.Errorf("nn: cuda GatedActivate: gate %v for input %v", gate.Shape, x.Shape)
	}
	if err := sameDType("GatedActivate", x, gate); err != nil {
		return err
	}
	return g.textLaunch("text_activate", x, gridFor(n), 0, x.Buf, gate.Buf, int64(n), int(act))
}

// AdaLayerNorm is ELLA's AdaLayerNorm after its linear: LN(x) * (1 +
// scale) + shift, LN without affine parameters, for x [Bx, L, W] and mod
// [Bm, 2W] holding (shift, scale); Bx and Bm are equal or one of them is 1
// and is broadcast. Returns [max(Bx, Bm), L, W].
func (g *GPU) AdaLayerNorm(x, mod *GPUTensor, eps float32) (*GPUTensor, error) {
	return g.adaNorm("AdaLayerNorm", x, mod, eps, 1)
}

// Modulate is AdaLayerNorm without the normalisation: x * (1 + scale) +
// shift (for text already normalised once per prompt).
func (g *GPU) Modulate(x, mod *GPUTensor) (*GPUTensor, error) {
	return g.adaNorm("Modulate", x, mod, 0, 0)
}

func (g *GPU) adaNorm(op string, x, mod *GPUTensor, eps float32, norm int) (*GPUTensor, error) {
	if len(x.Shape) != 3 || len(mod.Shape) != 2 || mod.Shape[1] != 2*x.Shape[2] {
		return nil, fmt.Errorf("nn: cuda %s: input %v with modulation %v (want [B, L, W] and [B, 2W])", op, x.Shape, mod.Shape)
	}
	bx, l, w := x.Shape[0], x.Shape[1], x.Shape[2]
	bm := mod.Shape[0]
	if bx != bm && bx != 1 && bm != 1 {
		return nil, fmt.Errorf("nn: cuda %s: %d input rows with %d modulation rows", op, bx, bm)
	}
	if err := sameDType(op, x, mod); err != nil {
		return nil, err
	}
	bo := max(bx, bm)
	y, err := g.emptyLike(x, bo, l, w) // [Bo, L, W]
	if err != nil {
		return nil, err
	}
	if err := g.textLaunch("ada_norm", x, cuda.Dim3{X: uint32(bo * l)}, 0, x.Buf, mod.Buf, y.Buf, bx, bm, l, w, eps, norm); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// AddOuterRows returns y [B, Q, W] with y[b, q] = a[q] + rows[b] for a
// [Q, W] and rows [B, W] (ELLA: latents + time_aware_linear(silu(temb))).
func (g *GPU) AddOuterRows(a, rows *GPUTensor) (*GPUTensor, error) {
	if len(a.Shape) != 2 || len(rows.Shape) != 2 || a.Shape[1] != rows.Shape[1] {
		return nil, fmt.Errorf("nn: cuda AddOuterRows: %v and rows %v (want [Q, W] and [B, W])", a.Shape, rows.Shape)
	}
	if err := sameDType("AddOuterRows", a, rows); err != nil {
		return nil, err
	}
	q, w, b := a.Shape[0], a.Shape[1], rows.Shape[0]
	y, err := g.emptyLike(a, b, q, w) // [B, Q, W]
	if err != nil {
		return nil, err
	}
	n := y.Numel()
	if err := g.textLaunch("add_outer_rows", a, gridFor(n), 0, a.Buf, rows.Buf, y.Buf, q, w, int64(n)); err != nil {
		y.Free()
		return nil, err
	}
	return y, nil
}

// Cast returns x converted to dtype dt (fp16 rounds to nearest even), or
// a copy when x already is dt.
func (g *GPU) Cast(x *GPUTensor, dt GPUDType) (*GPUTensor, error) {
	y, err := g.EmptyOf(dt, x.Shape...) // same shape as x
	if err != nil {
		return nil, err
	}
	n := x.Numel()
	if x.DType == dt {
		err = y.Buf.CopyFrom(x.Buf, x.Bytes())
	} else {
		err = g.textLaunch("cast", x, gridFor(n), 0, x.Buf, y.Buf, int64(n))
	}
	if err != nil {
		y.Free()
		return nil, fmt.Errorf("nn: cuda Cast %s to %s: %w", x.DType, dt, err)
	}
	return y, nil
}

// emptyLike allocates a tensor of shape in like's dtype.
func (g *GPU) emptyLike(like *GPUTensor, shape ...int) (*GPUTensor, error) {
	return g.EmptyOf(like.DType, shape...)
}
