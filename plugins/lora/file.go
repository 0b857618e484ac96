// Package lora reads LoRA-family adapter files (kohya LoRA/LoCon, LyCORIS
// LoHa/LoKr/IA3/full, PEFT and diffusers LoRA, ComfyUI extractions, DoRA) and
// merges them into SD 1.5 checkpoint weights, following
// ../shared/specs/checkpoints-and-lora.md §6-§14.
//
// It is a library: the LoRA plugin process and `sdbridge merge` call it. It
// knows nothing about how tensors are stored (arena, mmap, GPU): callers give
// it the checkpoint's key list and shapes, then float32 copies of the
// original weights, and get float32 merged weights back (plan.go).
//
// file.go loads one adapter file: it groups tensors into modules by part
// suffix (keys.go), detects each module's algorithm by the parts present
// (spec §7.5) and reads the scalars (alpha, scale, on_input). Factors are
// widened to float32 lazily, once per module, at the first merge. It does
// not resolve module names against a checkpoint (aliases.go, plan.go).
package lora

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// Source is what an adapter file is read from: *safetensors.File or any
// in-memory stand-in with the same methods.
type Source interface {
	Names() []string
	Lookup(name string) (*safetensors.Info, bool)
	Get(name string) (safetensors.Tensor, error)
}

// Algo is the adapter algorithm of one module (spec §7.5).
type Algo string

const (
	AlgoLoRA  Algo = "lora"  // up/down (LoCon when the target is a 3x3 conv); + lora_mid = Tucker
	AlgoLoHa  Algo = "loha"  // hada_w{1,2}_{a,b} [+ hada_t{1,2}]
	AlgoLoKr  Algo = "lokr"  // lokr_w1[_a/_b], lokr_w2[_a/_b] [+ lokr_t2]
	AlgoIA3   Algo = "ia3"   // weight + on_input
	AlgoFull  Algo = "full"  // diff [+ diff_b]
	AlgoNorm  Algo = "norm"  // w_norm [+ b_norm]
	AlgoGLoRA Algo = "glora" // a1, a2, b1, b2 (glora.go)
	AlgoOFT   Algo = "oft"   // oft_blocks (oft.go)
)

// Errors callers can test with errors.Is.
var (
	ErrFormat       = errors.New("lora: malformed adapter")
	ErrArchitecture = errors.New("lora: adapter is for another architecture")
	ErrUnmatched    = errors.New("lora: adapter modules not found in the checkpoint")
	ErrShape        = errors.New("lora: adapter shape does not fit the checkpoint")
	ErrUnsupported  = errors.New("lora: unsupported adapter algorithm")
)

// Module is one adapted module of a file: its parts grouped by role.
type Module struct {
	Name   string          // module name as spelled in the file
	Algo   Algo            //
	Keys   map[Part]string // part -> tensor name in the file
	Shape  map[Part][]int  // part -> stored shape
	Rank   int             // rank the scale divides by (0 when the algorithm has none)
	Alpha  float64         // alpha as stored (widened from its dtype)
	HasA   bool            // alpha present
	Scale  float64         // explicit .scale tensor value
	HasS   bool            // .scale present
	Tucker bool            // lora_mid / hada_t* / lokr_t2 present
	DoRA   bool            // dora_scale or lora_magnitude_vector present
	OnIn   bool            // IA3: the vector scales input columns

	gloraOld bool // GLoRA in the old (A1111) factor layout

	once    sync.Once
	factors map[Part]*nn.Tensor
	ferr    error
}

// File is one loaded adapter file.
type File struct {
	Path     string
	Metadata map[string]string
	Modules  []*Module // sorted by name
	// Skipped lists tensors deliberately ignored (textual-inversion bundles).
	Skipped []string
	src     Source
	closer  func() error
	peft    peftConfig // PEFT lora_alpha for modules without alpha (peft.go)
}

// Load opens a .safetensors adapter file. Close it when done.
func Load(path string) (*File, error) {
	st, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("lora: %w", err)
	}
	f, err := Parse(path, st, st.Metadata)
	if err != nil {
		st.Close()
		return nil, err
	}
	f.closer = st.Close
	if f.peft == nil {
		if f.peft, err = loadSidecarConfig(path); err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: %s: %w", ErrFormat, path, err)
		}
	}
	return f, nil
}

// Close releases the underlying file, if Load opened it.
func (f *File) Close() error {
	if f.closer == nil {
		return nil
	}
	err := f.closer()
	f.closer = nil
	return err
}

// Parse groups the tensors of src into modules. name is used in errors.
func Parse(name string, src Source, meta map[string]string) (*File, error) {
	f := &File{Path: name, Metadata: meta, src: src}
	pc, err := parsePEFTConfig(meta)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrFormat, name, err)
	}
	f.peft = pc
	byName := map[string]*Module{}
	var bad []string
	for _, key := range src.Names() {
		if strings.HasPrefix(key, "bundle_emb.") {
			f.Skipped = append(f.Skipped, key)
			continue
		}
		mod, part, ok := ParseKey(key)
		if !ok {
			bad = append(bad, key)
			continue
		}
		m := byName[mod]
		if m == nil {
			m = &Module{Name: mod, Keys: map[Part]string{}, Shape: map[Part][]int{}}
			byName[mod] = m
		}
		if prev, dup := m.Keys[part]; dup {
			return nil, fmt.Errorf("%w: %s: tensors %q and %q are both the %s of module %q", ErrFormat, name, prev, key, part, mod)
		}
		info, _ := src.Lookup(key)
		if info == nil {
			return nil, fmt.Errorf("%w: %s: tensor %q listed but not found", ErrFormat, name, key)
		}
		if !info.DType.IsFloat() && part != PartOnInput {
			return nil, fmt.Errorf("%w: %s: tensor %q has dtype %s, want a float type", ErrFormat, name, key, info.DType)
		}
		if numel(info.Shape) == 0 {
			return nil, fmt.Errorf("%w: %s: tensor %q is empty (shape %v)", ErrFormat, name, key, info.Shape)
		}
		m.Keys[part] = key
		m.Shape[part] = info.Shape
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("%w: %s: %d tensor names have no known LoRA part suffix: %s", ErrFormat, name, len(bad), listFirst(bad, 10))
	}
	for _, m := range byName {
		if err := f.finish(m); err != nil {
			return nil, fmt.Errorf("%w: %s: module %q: %w", ErrFormat, name, m.Name, err)
		}
		f.Modules = append(f.Modules, m)
	}
	slices.SortFunc(f.Modules, func(a, b *Module) int { return strings.Compare(a.Name, b.Name) })
	if len(f.Modules) == 0 {
		return nil, fmt.Errorf("%w: %s: no adapter tensors", ErrFormat, name)
	}
	return f, nil
}

// has reports whether every part is present.
func (m *Module) has(parts ...Part) bool {
	for _, p := range parts {
		if _, ok := m.Keys[p]; !ok {
			return false
		}
	}
	return true
}

func (m *Module) hasAny(parts ...Part) bool {
	for _, p := range parts {
		if _, ok := m.Keys[p]; ok {
			return true
		}
	}
	return false
}

// finish detects the algorithm, the rank and reads the scalars.
func (f *File) finish(m *Module) error {
	switch {
	case m.hasAny(PartUp, PartDown, PartMid):
		if !m.has(PartUp, PartDown) {
			return errors.New("LoRA module needs both up (lora_up / lora_B) and down (lora_down / lora_A)")
		}
		m.Algo, m.Tucker = AlgoLoRA, m.has(PartMid)
		m.Rank = dim(m.Shape[PartDown], 0)
	case m.hasAny(PartHadaW1A, PartHadaW1B, PartHadaW2A, PartHadaW2B, PartHadaT1, PartHadaT2):
		if !m.has(PartHadaW1A, PartHadaW1B, PartHadaW2A, PartHadaW2B) {
			return errors.New("LoHa module needs hada_w1_a, hada_w1_b, hada_w2_a and hada_w2_b")
		}
		if m.hasAny(PartHadaT1, PartHadaT2) && !m.has(PartHadaT1, PartHadaT2) {
			return errors.New("LoHa CP module needs both hada_t1 and hada_t2")
		}
		m.Algo, m.Tucker = AlgoLoHa, m.has(PartHadaT1)
		m.Rank = dim(m.Shape[PartHadaW1B], 0)
	case m.hasAny(PartLokrW1, PartLokrW1A, PartLokrW1B, PartLokrW2, PartLokrW2A, PartLokrW2B, PartLokrT1, PartLokrT2):
		w1 := m.has(PartLokrW1) != m.has(PartLokrW1A, PartLokrW1B)
		w2 := m.has(PartLokrW2) != m.has(PartLokrW2A, PartLokrW2B)
		if !w1 || !w2 || m.hasAny(PartLokrW1A, PartLokrW1B) && !m.has(PartLokrW1A, PartLokrW1B) ||
			m.hasAny(PartLokrW2A, PartLokrW2B) && !m.has(PartLokrW2A, PartLokrW2B) {
			return errors.New("LoKr module needs lokr_w1 or lokr_w1_a+lokr_w1_b, and lokr_w2 or lokr_w2_a+lokr_w2_b")
		}
		if m.has(PartLokrT1) {
			return fmt.Errorf("%w: LoKr lokr_t1 (Tucker on the w1 side)", ErrUnsupported)
		}
		if m.has(PartLokrT2) && !m.has(PartLokrW2A) {
			return errors.New("LoKr lokr_t2 needs lokr_w2_a and lokr_w2_b")
		}
		m.Algo, m.Tucker = AlgoLoKr, m.has(PartLokrT2)
		switch {
		case m.has(PartLokrW2B):
			m.Rank = dim(m.Shape[PartLokrW2B], 0)
		case m.has(PartLokrW1B):
			m.Rank = dim(m.Shape[PartLokrW1B], 0)
		}
	case m.has(PartIA3Weight) || m.has(PartOnInput):
		if !m.has(PartIA3Weight, PartOnInput) {
			return errors.New("a bare .weight is not a full weight: an (IA)^3 vector needs on_input, and on_input needs .weight")
		}
		m.Algo = AlgoIA3
	case m.hasAny(PartDiff, PartDiffB):
		m.Algo = AlgoFull
	case m.hasAny(PartWNorm, PartBNorm):
		m.Algo = AlgoNorm
	case m.hasAny(PartGLoRAA1, PartGLoRAA2, PartGLoRAB1, PartGLoRAB2):
		if !m.has(PartGLoRAA1, PartGLoRAA2, PartGLoRAB1, PartGLoRAB2) {
			return errors.New("GLoRA module needs a1, a2, b1 and b2")
		}
		m.Algo = AlgoGLoRA
		var err error
		if m.gloraOld, m.Rank, err = gloraForm(m.Shape); err != nil {
			return err
		}
	case m.hasAny(PartOFTBlocks):
		m.Algo = AlgoOFT
	default:
		return fmt.Errorf("only %s: no weight-carrying part", partList(m))
	}
	if extra := m.foreignParts(); len(extra) > 0 {
		return fmt.Errorf("parts %v do not belong to a %s module", extra, m.Algo)
	}
	m.DoRA = m.hasAny(PartDoRA, PartMagnitude)
	if m.has(PartDoRA, PartMagnitude) {
		return errors.New("both dora_scale and lora_magnitude_vector")
	}
	if m.DoRA && !(m.Algo == AlgoLoRA || m.Algo == AlgoLoHa || m.Algo == AlgoLoKr || m.Algo == AlgoGLoRA) {
		return fmt.Errorf("DoRA scale on a %s module", m.Algo)
	}
	if m.Rank < 0 || (m.Rank == 0 && (m.Algo == AlgoLoRA || m.Algo == AlgoLoHa)) {
		return fmt.Errorf("rank %d", m.Rank)
	}
	var err error
	if m.has(PartAlpha) {
		if m.Alpha, err = f.scalar(m, PartAlpha); err != nil {
			return err
		}
		m.HasA = true
	}
	if m.has(PartScale) {
		if m.Scale, err = f.scalar(m, PartScale); err != nil {
			return err
		}
		m.HasS = true
	}
	if m.Algo == AlgoIA3 {
		v, err := f.scalar(m, PartOnInput)
		if err != nil {
			return err
		}
		m.OnIn = v != 0
	}
	return nil
}

// allowed lists the parts each algorithm may carry besides the common ones.
var allowed = map[Algo][]Part{
	AlgoLoRA:  {PartUp, PartDown, PartMid},
	AlgoLoHa:  {PartHadaW1A, PartHadaW1B, PartHadaW2A, PartHadaW2B, PartHadaT1, PartHadaT2},
	AlgoLoKr:  {PartLokrW1, PartLokrW1A, PartLokrW1B, PartLokrW2, PartLokrW2A, PartLokrW2B, PartLokrT1, PartLokrT2},
	AlgoIA3:   {PartIA3Weight, PartOnInput},
	AlgoFull:  {PartDiff, PartDiffB},
	AlgoNorm:  {PartWNorm, PartBNorm},
	AlgoGLoRA: {PartGLoRAA1, PartGLoRAA2, PartGLoRAB1, PartGLoRAB2},
	AlgoOFT:   {PartOFTBlocks, PartRescale},
}

func (m *Module) foreignParts() []Part {
	var out []Part
	for p := range m.Keys {
		switch p {
		case PartAlpha, PartScale, PartDoRA, PartMagnitude:
			continue
		}
		if !slices.Contains(allowed[m.Algo], p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

func partList(m *Module) string {
	var ps []string
	for p := range m.Keys {
		ps = append(ps, string(p))
	}
	slices.Sort(ps)
	return strings.Join(ps, ", ")
}

// scalar reads a one-element tensor as float64.
func (f *File) scalar(m *Module, p Part) (float64, error) {
	key := m.Keys[p]
	t, err := f.src.Get(key)
	if err != nil {
		return 0, err
	}
	if t.Numel() != 1 {
		return 0, fmt.Errorf("%s %q has shape %v, want a scalar", p, key, t.Shape)
	}
	v, err := t.Float32()
	if err != nil {
		return 0, err
	}
	return float64(v[0]), nil
}

// dim returns shape[i], or 0 when shape is too short.
func dim(shape []int, i int) int {
	if i < len(shape) {
		return shape[i]
	}
	return 0
}

// load widens every tensor part of m to float32, once.
func (f *File) load(m *Module) (map[Part]*nn.Tensor, error) {
	m.once.Do(func() {
		out := map[Part]*nn.Tensor{}
		for p, key := range m.Keys {
			switch p {
			case PartAlpha, PartScale, PartOnInput:
				continue
			}
			t, err := f.src.Get(key)
			if err != nil {
				m.ferr = fmt.Errorf("lora: %s: %w", f.Path, err)
				return
			}
			d, err := t.Float32()
			if err != nil {
				m.ferr = fmt.Errorf("lora: %s: %w", f.Path, err)
				return
			}
			out[p] = nn.From(d, t.Shape...)
		}
		m.factors = out
	})
	return m.factors, m.ferr
}

// listFirst joins up to n items and says how many more there are.
func listFirst(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s, ... (%d more, %d in all)", strings.Join(items[:n], ", "), len(items)-n, len(items))
}
