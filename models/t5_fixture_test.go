// t5_fixture_test.go builds small T5 encoder folders and ELLA connector
// files for the tests (deterministic weights that are exact in F16, BF16 and
// F32, so dtype variants must give bit-identical outputs). It holds no
// assertions of its own.
package models

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/sdbridge/sdbridge/safetensors"
)

// fixTensor is one tensor of a fixture file.
type fixTensor struct {
	Name  string
	Shape []int
	Vals  []float32
	DType safetensors.DType // F32 when zero
}

// fixVals returns n values k/64, k in [-64, 64]: exact in F16, BF16, F32.
func fixVals(rng *rand.Rand, n int, scale float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.IntN(129)-64) / 64 * scale
	}
	return v
}

func fixEncode(t testing.TB, ft fixTensor) safetensors.TensorData {
	dt := ft.DType
	if dt == "" {
		dt = safetensors.F32
	}
	var b []byte
	switch dt {
	case safetensors.F32:
		b = make([]byte, 4*len(ft.Vals))
		for i, v := range ft.Vals {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		}
	case safetensors.F16, safetensors.BF16:
		b = make([]byte, 2*len(ft.Vals))
		for i, v := range ft.Vals {
			h := safetensors.F32ToF16(v)
			if dt == safetensors.BF16 {
				h = safetensors.F32ToBF16(v)
			}
			binary.LittleEndian.PutUint16(b[2*i:], h)
		}
	default:
		t.Fatalf("fixture dtype %s", dt)
	}
	return safetensors.TensorData{Spec: safetensors.Spec{Name: ft.Name, DType: dt, Shape: ft.Shape}, Data: b}
}

func fixWrite(t testing.TB, path string, ts []fixTensor) {
	t.Helper()
	data := make([]safetensors.TensorData, len(ts))
	for i, ft := range ts {
		data[i] = fixEncode(t, ft)
	}
	if err := safetensors.WriteFile(path, data, nil); err != nil {
		t.Fatal(err)
	}
}

// fixT5Config is the tiny encoder of the tests.
func fixT5Config() map[string]any {
	return map[string]any{
		"model_type": "t5", "architectures": []string{"T5EncoderModel"},
		"d_model": 8, "d_kv": 4, "num_heads": 3, "d_ff": 12, "num_layers": 2, "vocab_size": 20,
		"relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
		"feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6,
	}
}

// fixT5Tensors returns the encoder tensors ("encoder." prefix, "shared.weight"
// embedding) for fixT5Config; gated selects wi_0/wi_1 over wi.
func fixT5Tensors(seed uint64, gated bool) []fixTensor {
	rng := rand.New(rand.NewPCG(seed, 7))
	const d, inner, ff, layers, vocab = 8, 12, 12, 2, 20
	ts := []fixTensor{{Name: "shared.weight", Shape: []int{vocab, d}, Vals: fixVals(rng, vocab*d, 4)}}
	for i := range layers {
		p := "encoder.block." + strconv.Itoa(i) + ".layer."
		ts = append(ts,
			fixTensor{Name: p + "0.layer_norm.weight", Shape: []int{d}, Vals: fixVals(rng, d, 2)},
			fixTensor{Name: p + "0.SelfAttention.q.weight", Shape: []int{inner, d}, Vals: fixVals(rng, inner*d, 1)},
			fixTensor{Name: p + "0.SelfAttention.k.weight", Shape: []int{inner, d}, Vals: fixVals(rng, inner*d, 1)},
			fixTensor{Name: p + "0.SelfAttention.v.weight", Shape: []int{inner, d}, Vals: fixVals(rng, inner*d, 1)},
			fixTensor{Name: p + "0.SelfAttention.o.weight", Shape: []int{d, inner}, Vals: fixVals(rng, inner*d, 1)},
			fixTensor{Name: p + "1.layer_norm.weight", Shape: []int{d}, Vals: fixVals(rng, d, 2)},
		)
		if i == 0 {
			ts = append(ts, fixTensor{Name: p + "0.SelfAttention.relative_attention_bias.weight", Shape: []int{32, 3}, Vals: fixVals(rng, 32*3, 2)})
		}
		if gated {
			ts = append(ts,
				fixTensor{Name: p + "1.DenseReluDense.wi_0.weight", Shape: []int{ff, d}, Vals: fixVals(rng, ff*d, 1)},
				fixTensor{Name: p + "1.DenseReluDense.wi_1.weight", Shape: []int{ff, d}, Vals: fixVals(rng, ff*d, 1)})
		} else {
			ts = append(ts, fixTensor{Name: p + "1.DenseReluDense.wi.weight", Shape: []int{ff, d}, Vals: fixVals(rng, ff*d, 1)})
		}
		ts = append(ts, fixTensor{Name: p + "1.DenseReluDense.wo.weight", Shape: []int{d, ff}, Vals: fixVals(rng, ff*d, 0.5)})
	}
	return append(ts, fixTensor{Name: "encoder.final_layer_norm.weight", Shape: []int{d}, Vals: fixVals(rng, d, 2)})
}

// fixT5Dir writes config (nil: none) and tensors (nil: none) into a new
// folder and returns it.
func fixT5Dir(t testing.TB, cfg map[string]any, ts []fixTensor) string {
	t.Helper()
	dir := t.TempDir()
	if cfg != nil {
		b, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if ts != nil {
		fixWrite(t, filepath.Join(dir, "model.safetensors"), ts)
	}
	return dir
}

// fixEdit returns a copy of ts changed by fn (return false to drop a tensor).
func fixEdit(ts []fixTensor, fn func(t *fixTensor) bool) []fixTensor {
	var out []fixTensor
	for _, t := range ts {
		t.Shape = append([]int(nil), t.Shape...)
		if fn(&t) {
			out = append(out, t)
		}
	}
	return out
}

// fixRename maps names with fn.
func fixRename(ts []fixTensor, fn func(string) string) []fixTensor {
	return fixEdit(ts, func(t *fixTensor) bool { t.Name = fn(t.Name); return true })
}

// fixELLA sizes: W 16, heads 4, Q 5, Din 6, E 12, Ct 8, 2 blocks.
const (
	fixEW, fixEQ, fixEDin, fixEE, fixECt, fixEL = 16, 5, 6, 12, 8, 2
)

// fixELLATensors returns an ELLA connector with the official key names.
func fixELLATensors(seed uint64) []fixTensor {
	rng := rand.New(rand.NewPCG(seed, 11))
	w, e := fixEW, fixEE
	lin := func(name string, in, out int, scale float32) []fixTensor {
		return []fixTensor{
			{Name: name + ".weight", Shape: []int{out, in}, Vals: fixVals(rng, out*in, scale), DType: safetensors.BF16},
			{Name: name + ".bias", Shape: []int{out}, Vals: fixVals(rng, out, scale), DType: safetensors.BF16},
		}
	}
	var ts []fixTensor
	ts = append(ts, lin("time_embedding.linear_1", fixECt, e, 0.5)...)
	ts = append(ts, lin("time_embedding.linear_2", e, e, 0.5)...)
	ts = append(ts, fixTensor{Name: "connector.latents", Shape: []int{fixEQ, w}, Vals: fixVals(rng, fixEQ*w, 1), DType: safetensors.BF16})
	ts = append(ts, lin("connector.time_aware_linear", e, w, 0.5)...)
	ts = append(ts, lin("connector.proj_in", fixEDin, w, 0.5)...)
	for i := range fixEL {
		p := "connector.perceiver_blocks." + strconv.Itoa(i) + "."
		ts = append(ts,
			fixTensor{Name: p + "attn.in_proj_weight", Shape: []int{3 * w, w}, Vals: fixVals(rng, 3*w*w, 0.5)},
			fixTensor{Name: p + "attn.in_proj_bias", Shape: []int{3 * w}, Vals: fixVals(rng, 3*w, 0.5)})
		ts = append(ts, lin(p+"attn.out_proj", w, w, 0.25)...)
		ts = append(ts, lin(p+"mlp.c_fc", w, 4*w, 0.25)...)
		ts = append(ts, lin(p+"mlp.c_proj", 4*w, w, 0.125)...)
		for _, ln := range []string{"ln_1", "ln_2", "ln_ff"} {
			ts = append(ts, lin(p+ln+".linear", e, 2*w, 0.25)...)
		}
	}
	return ts
}

func fixFile(t testing.TB, ts []fixTensor) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ella.safetensors")
	fixWrite(t, path, ts)
	return path
}
