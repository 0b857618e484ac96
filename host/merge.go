// merge.go writes a new checkpoint with LoRAs merged into it ('sdbridge
// merge', issue 3 item 6; spec checkpoints-and-lora.md §10.3-§10.4, §12).
//
// The output is streamed with safetensors.NewWriter in the input's tensor
// order: every tensor the plan does not touch is copied byte for byte from
// the mmap'd input (or converted, with --dtype), every touched tensor is
// widened to float32, merged by lora.Plan.Apply (all adapters in one float
// pass) and cast once, round-to-nearest-even, to its output dtype. Touched
// tensors are computed by a few workers ahead of the writer, within a bounded
// window, so memory stays a few tensors deep. With MergeOptions.GPU the
// merges themselves run on the GPU (merge_gpu.go). The file is written to a temp
// file beside the output and renamed at the end; on any error (or a
// cancelled context) the temp file is removed and nothing is left behind.
// The input's metadata is kept and "sdbridge.merged_loras" lists the merged
// adapters (appended to any list already there).
//
// It does not patch a running model (plugin_patch.go does), does not write
// fp8 (a touched fp8 tensor needs --dtype), and does not parse the A1111
// prompt syntax.
package host

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sdbridge/sdbridge/inspect"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/lora"
	"github.com/sdbridge/sdbridge/safetensors"
)

// MergedLoRAsKey is the metadata key listing the adapters merged into a file.
const MergedLoRAsKey = "sdbridge.merged_loras"

// MergeLoRA is one adapter to merge, with its strengths.
type MergeLoRA struct {
	Path string
	// UNet and TE are the U-Net and text-encoder strengths (spec §10.3).
	UNet, TE float64
	// Blocks is a 17- or 26-value lora-block-weight vector; nil = 1 everywhere.
	Blocks []float64
}

// MergeOptions describes one merge.
type MergeOptions struct {
	Model string      // input checkpoint (.safetensors)
	LoRAs []MergeLoRA // merged in this order
	Out   string      // output path
	// DType is "keep" (or ""), "fp16", "bf16" or "fp32": the dtype of every
	// floating-point tensor of the output. Integer tensors are always kept.
	DType string
	// Force allows replacing an existing output file (never the input).
	Force bool
	// Workers computing touched tensors; 0 = GOMAXPROCS.
	Workers int
	// Progress, if set, is called from the writing goroutine after each tensor.
	Progress func(MergeProgress)
	// GPU, if set, computes the touched tensors' merges there (merge_gpu.go)
	// in float32; reading, casting and writing stay on the CPU.
	GPU *nn.GPU
}

// MergeProgress is the state of a merge after one more tensor was written.
type MergeProgress struct {
	Done, Total       int   // tensors
	Bytes, TotalBytes int64 // output data bytes
	Elapsed           time.Duration
}

// MergedLoRA is one entry of the MergedLoRAsKey metadata list.
type MergedLoRA struct {
	File   string    `json:"file"`   // base name
	SHA256 string    `json:"sha256"` // of the whole file
	AutoV2 string    `json:"autov2"` // A1111's short hash (first 10 hex digits)
	UNet   float64   `json:"unet"`
	TE     float64   `json:"te"`
	Blocks []float64 `json:"blocks,omitempty"`
}

// MergeStats reports a finished merge.
type MergeStats struct {
	Tensors, Touched int
	Bytes            int64 // output data bytes
	Elapsed          time.Duration
	LoRAs            []MergedLoRA
}

// Merge writes opts.Out: opts.Model with opts.LoRAs merged in.
func Merge(ctx context.Context, opts MergeOptions) (*MergeStats, error) {
	start := time.Now()
	if opts.Model == "" || opts.Out == "" {
		return nil, errors.New("merge: a model and an output path are needed")
	}
	if len(opts.LoRAs) == 0 {
		return nil, errors.New("merge: no LoRA given")
	}
	target, err := mergeDType(opts.DType)
	if err != nil {
		return nil, err
	}
	if err := checkMergeOutput(opts.Model, opts.Out, opts.Force); err != nil {
		return nil, err
	}
	ckpt, err := safetensors.Open(opts.Model)
	if err != nil {
		return nil, fmt.Errorf("merge: model: %w", err)
	}
	defer ckpt.Close()
	if r := inspect.Classify(ckpt); r.Kind != inspect.KindCheckpoint || r.Architecture != "SD1.5" {
		what := r.Kind
		if r.Architecture != "" {
			what += " (" + r.Architecture + ")"
		}
		return nil, fmt.Errorf("merge: %s is a %s file, not an SD1.5 checkpoint", opts.Model, what)
	}

	adapters := make([]lora.Adapter, len(opts.LoRAs))
	merged := make([]MergedLoRA, len(opts.LoRAs))
	for i, l := range opts.LoRAs {
		f, err := lora.Load(l.Path)
		if err != nil {
			return nil, fmt.Errorf("merge: LoRA %s: %w", l.Path, err)
		}
		defer f.Close()
		adapters[i] = lora.Adapter{File: f, UNet: l.UNet, TE: l.TE, Blocks: l.Blocks}
		sum, err := sha256Hex(l.Path)
		if err != nil {
			return nil, fmt.Errorf("merge: LoRA %s: %w", l.Path, err)
		}
		merged[i] = MergedLoRA{File: filepath.Base(l.Path), SHA256: sum, AutoV2: sum[:10], UNet: l.UNet, TE: l.TE, Blocks: l.Blocks}
	}
	plan, err := lora.NewIndex(ckpt).Plan(adapters)
	if err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}

	meta, err := mergedMetadata(ckpt.Metadata, merged)
	if err != nil {
		return nil, err
	}
	jobs, err := mergeJobs(ckpt, plan, target)
	if err != nil {
		return nil, err
	}
	specs := make([]safetensors.Spec, len(jobs))
	var total int64
	touched := 0
	for i, j := range jobs {
		specs[i] = safetensors.Spec{Name: j.info.Name, DType: j.out, Shape: j.info.Shape}
		total += int64(j.info.Numel() * j.out.Size())
		if j.touched {
			touched++
		}
	}

	tmp, err := os.CreateTemp(filepath.Dir(opts.Out), "."+filepath.Base(opts.Out)+".*.tmp")
	if err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	w, err := safetensors.NewWriter(tmp, specs, meta)
	if err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	st := &MergeStats{Tensors: len(jobs), Touched: touched, LoRAs: merged}
	if err := streamMerge(ctx, ckpt, plan, jobs, w, opts, total, start, st); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("merge: writing %s: %w", opts.Out, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return nil, fmt.Errorf("merge: writing %s: %w", opts.Out, err)
	}
	if err := tmp.Sync(); err != nil {
		return nil, fmt.Errorf("merge: writing %s: %w", opts.Out, err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("merge: writing %s: %w", opts.Out, err)
	}
	if err := os.Rename(tmp.Name(), opts.Out); err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	ok = true
	st.Elapsed = time.Since(start)
	return st, nil
}

// mergeJob is one output tensor.
type mergeJob struct {
	info    safetensors.Info
	out     safetensors.DType
	touched bool // merged by the plan
	convert bool // untouched but cast to another dtype
}

func mergeDType(s string) (safetensors.DType, error) {
	switch strings.ToLower(s) {
	case "", "keep":
		return "", nil
	case "fp16", "f16", "float16", "half":
		return safetensors.F16, nil
	case "bf16", "bfloat16":
		return safetensors.BF16, nil
	case "fp32", "f32", "float32", "float":
		return safetensors.F32, nil
	}
	return "", fmt.Errorf("merge: --dtype %q: want keep, fp16, bf16 or fp32", s)
}

// encodable lists the dtypes a float32 result can be cast to.
func encodable(d safetensors.DType) bool {
	switch d {
	case safetensors.F16, safetensors.BF16, safetensors.F32, safetensors.F64:
		return true
	}
	return false
}

func mergeJobs(ckpt *safetensors.File, plan *lora.Plan, target safetensors.DType) ([]mergeJob, error) {
	jobs := make([]mergeJob, 0, len(ckpt.Tensors))
	for _, name := range ckpt.Names() {
		info, _ := ckpt.Lookup(name)
		j := mergeJob{info: *info, out: info.DType}
		if target != "" && info.DType.IsFloat() {
			j.out = target
		}
		_, j.touched = plan.Target(name)
		j.convert = !j.touched && j.out != info.DType
		if j.touched && !info.DType.IsFloat() {
			return nil, fmt.Errorf("merge: tensor %q is %s, not floating point; a LoRA cannot be merged into it", name, info.DType)
		}
		if j.touched && !encodable(j.out) {
			return nil, fmt.Errorf("merge: tensor %q is stored as %s, which merge does not write; pass --dtype fp16, bf16 or fp32", name, j.out)
		}
		jobs = append(jobs, j)
	}
	return jobs, nil
}

// streamMerge writes every job in order. Touched and converted tensors are
// computed by workers ahead of the writer, at most window tensors ahead.
func streamMerge(ctx context.Context, ckpt *safetensors.File, plan *lora.Plan, jobs []mergeJob,
	w *safetensors.Writer, opts MergeOptions, total int64, start time.Time, st *MergeStats) error {
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	window := 2 * workers
	type result struct {
		data []byte
		err  error
	}
	results := make([]chan result, len(jobs))
	for i, j := range jobs {
		if j.touched || j.convert {
			results[i] = make(chan result, 1)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tokens := make(chan struct{}, window)
	work := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range work {
				data, err := computeMergeJob(ckpt, plan, jobs[i], opts.GPU)
				results[i] <- result{data, err}
			}
		})
	}
	go func() { // feed computed jobs in order, within the window
		defer close(work)
		for i := range jobs {
			if results[i] == nil {
				continue
			}
			select {
			case tokens <- struct{}{}:
			case <-ctx.Done():
				return
			}
			select {
			case work <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer wg.Wait()
	defer cancel()

	var written int64
	for i, j := range jobs {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("merge: %w", err)
		}
		var err error
		if results[i] == nil {
			t, gerr := ckpt.Get(j.info.Name)
			if gerr != nil {
				return fmt.Errorf("merge: %w", gerr)
			}
			err = writeMapped(w, t)
		} else {
			var r result
			select {
			case r = <-results[i]:
			case <-ctx.Done():
				return fmt.Errorf("merge: %w", ctx.Err())
			}
			<-tokens
			if r.err != nil {
				return r.err
			}
			err = w.WriteTensor(j.info.Name, r.data)
		}
		if err != nil {
			return fmt.Errorf("merge: writing %s: %w", opts.Out, err)
		}
		written += int64(j.info.Numel() * j.out.Size())
		if opts.Progress != nil {
			opts.Progress(MergeProgress{Done: i + 1, Total: len(jobs), Bytes: written, TotalBytes: total, Elapsed: time.Since(start)})
		}
	}
	st.Bytes = written
	return nil
}

// writeMapped copies one tensor from the mapping into w, turning a fault
// (the input shrank under us) into an error.
func writeMapped(w *safetensors.Writer, t safetensors.Tensor) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			err = fmt.Errorf("tensor %q: %w", t.Name, safetensors.ErrFault)
		}
	}()
	return w.WriteTensor(t.Name, t.Data)
}

// computeMergeJob returns the output bytes of a touched or converted tensor,
// merging on g when it is set.
func computeMergeJob(ckpt *safetensors.File, plan *lora.Plan, j mergeJob, g *nn.GPU) ([]byte, error) {
	t, err := ckpt.Get(j.info.Name)
	if err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	if j.convert && !encodable(j.out) {
		return nil, fmt.Errorf("merge: tensor %q: cannot write %s", j.info.Name, j.out)
	}
	vals, err := t.Float32() // [numel]
	if err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	if j.touched && g != nil {
		if err := mergeOnGPU(g, plan, j.info.Name, vals); err != nil {
			return nil, fmt.Errorf("merge: %w", err)
		}
	} else if j.touched {
		if err := plan.Apply(j.info.Name, vals, vals); err != nil {
			return nil, fmt.Errorf("merge: %w", err)
		}
	}
	return encodeFloat32(vals, j.out), nil
}

// encodeFloat32 casts v once to d (round-to-nearest-even), little-endian.
func encodeFloat32(v []float32, d safetensors.DType) []byte {
	out := make([]byte, len(v)*d.Size())
	switch d {
	case safetensors.F16:
		for i, x := range v {
			binary.LittleEndian.PutUint16(out[2*i:], safetensors.F32ToF16(x))
		}
	case safetensors.BF16:
		for i, x := range v {
			binary.LittleEndian.PutUint16(out[2*i:], safetensors.F32ToBF16(x))
		}
	case safetensors.F32:
		for i, x := range v {
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(x))
		}
	case safetensors.F64:
		for i, x := range v {
			binary.LittleEndian.PutUint64(out[8*i:], math.Float64bits(float64(x)))
		}
	}
	return out
}

// checkMergeOutput refuses to write over the input, into a missing folder,
// or over an existing file without force.
func checkMergeOutput(model, out string, force bool) error {
	in, err := os.Stat(model)
	if err != nil {
		return fmt.Errorf("merge: model: %w", err)
	}
	if fi, err := os.Stat(out); err == nil {
		if os.SameFile(in, fi) {
			return fmt.Errorf("merge: output %s is the input checkpoint; choose another path", out)
		}
		if fi.IsDir() {
			return fmt.Errorf("merge: output %s is a folder", out)
		}
		if !force {
			return fmt.Errorf("merge: output %s exists (pass --force to replace it)", out)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("merge: output: %w", err)
	}
	if fi, err := os.Stat(filepath.Dir(out)); err != nil || !fi.IsDir() {
		return fmt.Errorf("merge: output folder %s does not exist", filepath.Dir(out))
	}
	return nil
}

// mergedMetadata is the input's metadata plus the merged adapters.
func mergedMetadata(in map[string]string, loras []MergedLoRA) (map[string]string, error) {
	meta := make(map[string]string, len(in)+1)
	for k, v := range in {
		meta[k] = v
	}
	var list []MergedLoRA
	if prev, ok := in[MergedLoRAsKey]; ok {
		if err := json.Unmarshal([]byte(prev), &list); err != nil {
			list = nil // a foreign value: replace it rather than fail
		}
	}
	list = append(list, loras...)
	b, err := json.Marshal(list)
	if err != nil {
		return nil, fmt.Errorf("merge: metadata: %w", err)
	}
	meta[MergedLoRAsKey] = string(b)
	return meta, nil
}

// blockPresets are lora-block-weight's default 17-value presets
// (hako-mikan/sd-webui-lora-block-weight, lbwpresets.txt).
var blockPresets = map[string]string{
	"NONE":   "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
	"ALL":    "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
	"INS":    "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
	"IND":    "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
	"INALL":  "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
	"MIDD":   "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
	"OUTD":   "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
	"OUTS":   "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
	"OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
	"ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}

// ParseBlockWeights reads a lora-block-weight preset name (NONE, ALL, INS,
// IND, INALL, MIDD, OUTD, OUTS, OUTALL, ALL0.5) or a comma list of 17 or 26
// numbers.
func ParseBlockWeights(s string) ([]float64, error) {
	if p, ok := blockPresets[strings.ToUpper(strings.TrimSpace(s))]; ok {
		s = p
	}
	parts := strings.Split(s, ",")
	v := make([]float64, len(parts))
	for i, p := range parts {
		x, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, fmt.Errorf("block weights %q: value %d (%q) is not a number (or use a preset: NONE, ALL, INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL, ALL0.5)", s, i+1, p)
		}
		v[i] = x
	}
	if _, err := lora.ExpandBlockWeights(v); err != nil {
		return nil, err
	}
	return v, nil
}

// ParseMergeLoRA reads a --lora value: FILE[:STRENGTH][:te=X][:unet=X][:blocks=V].
// STRENGTH (default 1) sets both strengths; te= and unet= override one.
// Options are read from the right, so FILE may itself contain ':'.
func ParseMergeLoRA(spec string) (MergeLoRA, error) {
	bad := func(format string, a ...any) (MergeLoRA, error) {
		return MergeLoRA{}, fmt.Errorf("bad --lora %q: %s (want FILE[:STRENGTH][:te=X][:unet=X][:blocks=17-or-26-values-or-preset])", spec, fmt.Sprintf(format, a...))
	}
	num := func(s string) (float64, bool) {
		x, err := strconv.ParseFloat(s, 64)
		return x, err == nil && !math.IsNaN(x) && !math.IsInf(x, 0)
	}
	parts := strings.Split(spec, ":")
	var te, unet *float64
	var blocks []float64
	seen := map[string]bool{}
	for len(parts) > 1 {
		last := parts[len(parts)-1]
		k, v, isOpt := strings.Cut(last, "=")
		if !isOpt {
			break
		}
		k = strings.ToLower(strings.TrimSpace(k))
		if seen[k] {
			return bad("option %q given twice", k)
		}
		seen[k] = true
		switch k {
		case "te", "unet":
			x, ok := num(strings.TrimSpace(v))
			if !ok {
				return bad("%s=%q is not a number", k, v)
			}
			if k == "te" {
				te = &x
			} else {
				unet = &x
			}
		case "blocks", "lbw":
			b, err := ParseBlockWeights(v)
			if err != nil {
				return bad("%v", err)
			}
			blocks = b
		default:
			return bad("unknown option %q", k)
		}
		parts = parts[:len(parts)-1]
	}
	strength := 1.0
	if len(parts) > 1 {
		if x, ok := num(strings.TrimSpace(parts[len(parts)-1])); ok {
			strength = x
			parts = parts[:len(parts)-1]
		}
	}
	file := strings.Join(parts, ":")
	if file == "" {
		return bad("no file")
	}
	l := MergeLoRA{Path: file, UNet: strength, TE: strength, Blocks: blocks}
	if te != nil {
		l.TE = *te
	}
	if unet != nil {
		l.UNet = *unet
	}
	return l, nil
}
