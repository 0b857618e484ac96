// t5_test.go tests the T5 encoder: relative position buckets (hand-derived
// values), RMSNorm, loader errors and layouts (prefixes, dtypes, shards),
// the key mask, input checks and fp16 emulation, on small generated folders.
// The numeric check against transformers is golden/run_t5_encoder_test.go.
package models

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

func TestRelativePositionBucket(t *testing.T) {
	// Worked by hand from HF's formula with 32 buckets, max distance 128:
	// half = 16 (r = j - i > 0 adds 16), max_exact = 8, and for n = |r| >= 8
	// bucket = 8 + trunc(ln(n/8) / ln(16) * 8), capped at 15.
	tests := []struct {
		name string
		i, j int
		want int
	}{
		{"same position", 4, 4, 0},
		{"key 2 before", 5, 3, 2},                      // n=2 < 8: exact
		{"key 2 after", 3, 5, 16 + 2},                  // r>0 half
		{"key 7 before", 7, 0, 7},                      // last exact bucket
		{"key 8 after", 0, 8, 16 + 8},                  // ln(1)=0 → 8
		{"key 11 before", 11, 0, 8},                    // ln(1.375)/ln16*8 = 0.92 → 8
		{"key 12 before", 12, 0, 9},                    // ln(1.5)/ln16*8 = 1.17 → 9
		{"key 16 after", 0, 16, 16 + 10},               // ln(2)/ln16*8 = 2 exactly → 10
		{"key 22 before", 30, 8, 10},                   // ln(2.75)/ln16*8 = 2.92 → 10
		{"key 23 before", 23, 0, 11},                   // ln(2.875)/ln16*8 = 3.05 → 11
		{"key 32 after", 1, 33, 16 + 12},               // ln(4)/ln16*8 = 4 → 12
		{"key 63 before", 63, 0, 13},                   // ln(7.875)/ln16*8 = 5.94 → 13
		{"key 64 before", 64, 0, 14},                   // ln(8)/ln16*8 = 6 → 14
		{"key 90 after", 0, 90, 16 + 14},               // ln(11.25)/ln16*8 = 6.98 → 14
		{"key 91 before", 91, 0, 15},                   // ln(11.375)/ln16*8 = 7.02 → 15
		{"key 127 after", 0, 127, 16 + 15},             // capped
		{"far beyond max distance", 1000, 0, 15},       // saturates
		{"far beyond max distance, after", 0, 999, 31}, // saturates in the upper half
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := RelativePositionBucket(tc.j-tc.i, 32, 128); got != tc.want {
				t.Errorf("bucket(i=%d, j=%d) = %d, want %d", tc.i, tc.j, got, tc.want)
			}
		})
	}
}

func TestRelativePositionBucketRanges(t *testing.T) {
	// Spec ella-and-t5 §4.3: |r| 0-7 → 0-7; 8-11 → 8; 12-15 → 9; 16-22 → 10;
	// 23-31 → 11; 32-45 → 12; 46-63 → 13; 64-90 → 14; ≥91 → 15.
	edges := []struct{ from, bucket int }{{8, 8}, {12, 9}, {16, 10}, {23, 11}, {32, 12}, {46, 13}, {64, 14}, {91, 15}}
	want := func(n int) int {
		if n < 8 {
			return n
		}
		b := 0
		for _, e := range edges {
			if n >= e.from {
				b = e.bucket
			}
		}
		return b
	}
	for _, tc := range []struct {
		name string
		sign int
		add  int
	}{{"key before query", -1, 0}, {"key after query", 1, 16}} {
		t.Run(tc.name, func(t *testing.T) {
			for n := 0; n <= 300; n++ {
				r := tc.sign * n
				w := want(n)
				if n > 0 {
					w += tc.add
				}
				if got := RelativePositionBucket(r, 32, 128); got != w {
					t.Errorf("r=%d: bucket %d, want %d", r, got, w)
				}
			}
		})
	}
}

func TestT5RMSNorm(t *testing.T) {
	// x = [3, 4]: mean(x^2) = 12.5, rsqrt = 0.282843; weight [1, 2]; a zero
	// row stays zero (eps keeps it finite).
	n := T5RMSNorm{Weight: nn.From([]float32{1, 2}, 2), Eps: 1e-6}
	got := n.Forward(nn.From([]float32{3, 4, 0, 0}, 2, 2))
	want := []float32{3 * 0.28284271, 4 * 0.28284271 * 2, 0, 0}
	for i := range want {
		if math.IsNaN(float64(got.Data[i])) || math.Abs(float64(got.Data[i]-want[i])) > 1e-5 {
			t.Fatalf("RMSNorm = %v, want %v", got.Data, want)
		}
	}
}

func t5Encode(t *testing.T, dir string, ids [][]int, mask [][]bool) *nn.Tensor {
	t.Helper()
	e, err := LoadT5Encoder(dir)
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.Encode(ids, mask)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var t5IDs = [][]int{{3, 7, 19, 0, 5, 1}}

func TestT5EncoderLayouts(t *testing.T) {
	base := fixT5Tensors(1, true)
	want := t5Encode(t, fixT5Dir(t, fixT5Config(), base), t5IDs, nil)
	if want.Dim(0) != 1 || want.Dim(1) != 6 || want.Dim(2) != 8 {
		t.Fatalf("shape %v, want [1 6 8]", want.Shape)
	}
	decoder := append(fixRename(base, func(n string) string {
		return strings.Replace(n, "encoder.", "decoder.", 1)
	}), fixTensor{Name: "lm_head.weight", Shape: []int{20, 8}, Vals: make([]float32, 160)})
	tests := []struct {
		name string
		ts   []fixTensor
	}{
		{"encoder.embed_tokens.weight", fixRename(base, func(n string) string {
			if n == "shared.weight" {
				return "encoder.embed_tokens.weight"
			}
			return n
		})},
		{"both embedding names", append(base, fixTensor{Name: "encoder.embed_tokens.weight", Shape: []int{20, 8}, Vals: base[0].Vals})},
		{"no encoder. prefix", fixRename(base, func(n string) string { return strings.TrimPrefix(n, "encoder.") })},
		{"full model with decoder and lm_head", append(base[:len(base):len(base)], fixEdit(decoder, func(t *fixTensor) bool {
			return t.Name != "shared.weight"
		})...)},
		{"fp16 with fp32 wo", fixEdit(base, func(t *fixTensor) bool {
			t.DType = safetensors.F16
			if strings.HasSuffix(t.Name, ".wo.weight") {
				t.DType = safetensors.F32
			}
			return true
		})},
		{"bf16", fixEdit(base, func(t *fixTensor) bool { t.DType = safetensors.BF16; return true })},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := t5Encode(t, fixT5Dir(t, fixT5Config(), tc.ts), t5IDs, nil)
			if diff := cmp.Diff(want.Data, got.Data); diff != "" {
				t.Errorf("output differs from the baseline layout (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("sharded index", func(t *testing.T) {
		dir := fixT5Dir(t, fixT5Config(), nil)
		half := len(base)/2 + 1
		fixWrite(t, filepath.Join(dir, "model-00001-of-00002.safetensors"), base[:half])
		fixWrite(t, filepath.Join(dir, "model-00002-of-00002.safetensors"), base[half:])
		idx := map[string]map[string]string{"weight_map": {}}
		for i, ft := range base {
			shard := "model-00001-of-00002.safetensors"
			if i >= half {
				shard = "model-00002-of-00002.safetensors"
			}
			idx["weight_map"][ft.Name] = shard
		}
		b, _ := json.Marshal(idx)
		if err := os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		got := t5Encode(t, dir, t5IDs, nil)
		if diff := cmp.Diff(want.Data, got.Data); diff != "" {
			t.Errorf("sharded output differs (-want +got):\n%s", diff)
		}
	})
}

func TestT5FeedForwardVariants(t *testing.T) {
	gated := fixT5Tensors(2, true)
	want := t5Encode(t, fixT5Dir(t, fixT5Config(), gated), t5IDs, nil)
	t.Run("config says gelu for gated weights", func(t *testing.T) {
		cfg := fixT5Config()
		cfg["feed_forward_proj"] = "gelu"
		got := t5Encode(t, fixT5Dir(t, cfg, gated), t5IDs, nil)
		if diff := cmp.Diff(want.Data, got.Data); diff != "" {
			t.Errorf("gated weights must run gated gelu_new (-want +got):\n%s", diff)
		}
	})
	t.Run("t5 v1.0 relu", func(t *testing.T) {
		cfg := fixT5Config()
		cfg["feed_forward_proj"] = "relu"
		got := t5Encode(t, fixT5Dir(t, cfg, fixT5Tensors(2, false)), t5IDs, nil)
		if cmp.Equal(want.Data, got.Data) {
			t.Error("relu encoder gave the gated encoder's output")
		}
	})
}

func TestLoadT5EncoderErrors(t *testing.T) {
	base := fixT5Tensors(3, true)
	withCfg := func(edit func(map[string]any)) map[string]any {
		c := fixT5Config()
		edit(c)
		return c
	}
	tests := []struct {
		name    string
		dir     func(t *testing.T) string
		wantErr string
	}{
		{"no such folder", func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope") }, "no such file"},
		{"a file, not a folder", func(t *testing.T) string {
			return filepath.Join(fixT5Dir(t, fixT5Config(), base), "model.safetensors")
		}, "is not a folder"},
		{"no config", func(t *testing.T) string { return fixT5Dir(t, nil, base) }, "config.json"},
		{"no weights", func(t *testing.T) string { return fixT5Dir(t, fixT5Config(), nil) }, "no model.safetensors"},
		{"pickle weights only", func(t *testing.T) string {
			dir := fixT5Dir(t, fixT5Config(), nil)
			os.WriteFile(filepath.Join(dir, "pytorch_model.bin"), []byte("PK"), 0o644)
			return dir
		}, "pytorch_model.bin is a pickle"},
		{"BERT config", func(t *testing.T) string {
			return fixT5Dir(t, map[string]any{"model_type": "bert", "hidden_size": 8, "architectures": []string{"BertModel"}}, base)
		}, `model_type "bert" is not a T5 encoder`},
		{"CLIP text config", func(t *testing.T) string {
			return fixT5Dir(t, map[string]any{"model_type": "clip_text_model", "hidden_size": 8}, base)
		}, `model_type "clip_text_model" is not a T5 encoder`},
		{"UMT5 config", func(t *testing.T) string {
			return fixT5Dir(t, withCfg(func(c map[string]any) { c["model_type"] = "umt5" }), base)
		}, "not a T5 encoder"},
		{"no model_type", func(t *testing.T) string {
			return fixT5Dir(t, withCfg(func(c map[string]any) { delete(c, "model_type") }), base)
		}, "no model_type"},
		{"foreign architecture", func(t *testing.T) string {
			return fixT5Dir(t, withCfg(func(c map[string]any) { c["architectures"] = []string{"BertModel"} }), base)
		}, `architecture "BertModel"`},
		{"bad feed_forward_proj", func(t *testing.T) string {
			return fixT5Dir(t, withCfg(func(c map[string]any) { c["feed_forward_proj"] = "gated-tanh-x" }), base)
		}, "feed_forward_proj"},
		{"CLIP weights with T5 config", func(t *testing.T) string {
			return fixT5Dir(t, fixT5Config(), []fixTensor{{Name: "text_model.embeddings.token_embedding.weight", Shape: []int{20, 8}, Vals: make([]float32, 160)}})
		}, `"encoder.block.0.layer.0.SelfAttention.q.weight": not a T5 encoder`},
		{"missing wo names the key", func(t *testing.T) string {
			return fixT5Dir(t, fixT5Config(), fixEdit(base, func(t *fixTensor) bool {
				return t.Name != "encoder.block.1.layer.1.DenseReluDense.wo.weight"
			}))
		}, `"encoder.block.1.layer.1.DenseReluDense.wo.weight"`},
		{"no embedding", func(t *testing.T) string {
			return fixT5Dir(t, fixT5Config(), fixEdit(base, func(t *fixTensor) bool { return t.Name != "shared.weight" }))
		}, "no token embedding"},
		{"wrong d_model names the key", func(t *testing.T) string {
			return fixT5Dir(t, withCfg(func(c map[string]any) { c["d_model"] = 16 }), base)
		}, `"shared.weight" has shape [20 8], want [vocab, 16]`},
		{"wrong heads names the key", func(t *testing.T) string {
			return fixT5Dir(t, withCfg(func(c map[string]any) { c["num_heads"] = 2 }), base)
		}, `relative_attention_bias.weight" has shape [32 3], want [32 2]`},
		{"more blocks than the config", func(t *testing.T) string {
			return fixT5Dir(t, withCfg(func(c map[string]any) { c["num_layers"] = 1 }), base)
		}, `unexpected tensor "encoder.block.1.`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadT5Encoder(tc.dir(t))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestT5EncodeMask(t *testing.T) {
	dir := fixT5Dir(t, fixT5Config(), fixT5Tensors(4, true))
	real := []int{3, 7, 19, 5, 1}
	padded := [][]int{append(append([]int{}, real...), 0, 0, 0), {4, 4, 4, 4, 4, 4, 4, 1}}
	mask := [][]bool{{true, true, true, true, true, false, false, false}, {true, true, true, true, true, true, true, true}}
	want := t5Encode(t, dir, [][]int{real}, nil) // [1, 5, 8]
	withMask := t5Encode(t, dir, padded, mask)   // [2, 8, 8]
	noMask := t5Encode(t, dir, padded[:1], nil)  // [1, 8, 8]
	second := t5Encode(t, dir, padded[1:], nil)  // [1, 8, 8]
	rows := 5 * 8
	if d := maxAbsDiff(want.Data, withMask.Data[:rows]); d > 1e-5 {
		t.Errorf("masked pads changed the real rows: max diff %g", d)
	}
	if d := maxAbsDiff(want.Data, noMask.Data[:rows]); d < 1e-3 {
		t.Errorf("unmasked pads left the real rows unchanged (diff %g): the mask test proves nothing", d)
	}
	if d := maxAbsDiff(second.Data, withMask.Data[64:]); d > 1e-5 {
		t.Errorf("batch row 1 differs from its own encode: max diff %g", d)
	}
	if d := maxAbsDiff(second.Data, t5Encode(t, dir, padded, nil).Data[64:]); d > 1e-5 {
		t.Errorf("unmasked batch row 1 differs from its own encode: max diff %g", d)
	}
	for i, v := range withMask.Data[rows:64] {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatalf("pad row output %d is %v; pad rows must still be computed", i, v)
		}
	}
}

func maxAbsDiff(a, b []float32) float64 {
	d := 0.0
	for i := range a {
		d = max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

func TestT5EncodeInputErrors(t *testing.T) {
	e, err := LoadT5Encoder(fixT5Dir(t, fixT5Config(), fixT5Tensors(5, true)))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		ids     [][]int
		mask    [][]bool
		wantErr string
	}{
		{"no rows", nil, nil, "no tokens"},
		{"empty row", [][]int{{}}, nil, "no tokens"},
		{"id past the vocabulary", [][]int{{1, 20}}, nil, "id 20 at [0,1]"},
		{"negative id", [][]int{{-1}}, nil, "id -1"},
		{"ragged rows", [][]int{{1, 2}, {1}}, nil, "row 1 has 1 ids"},
		{"mask rows", [][]int{{1, 2}}, [][]bool{{true, true}, {true, true}}, "mask has 2 rows"},
		{"mask length", [][]int{{1, 2}}, [][]bool{{true}}, "mask row 0 has 1 entries"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.Encode(tc.ids, tc.mask)
			if !errors.Is(err, ErrT5Input) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want ErrT5Input containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestT5FP16Emulation(t *testing.T) {
	dir := fixT5Dir(t, fixT5Config(), fixT5Tensors(6, true))
	want := t5Encode(t, dir, t5IDs, nil)
	e, err := LoadT5EncoderWith(dir, T5Options{EmulateFP16: true})
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.Encode(t5IDs, nil)
	if err != nil {
		t.Fatal(err)
	}
	var num, den float64
	for i := range want.Data {
		if got.Data[i] != roundF16(got.Data[i]) {
			t.Fatalf("output %d = %v is not an fp16 value", i, got.Data[i])
		}
		d := float64(got.Data[i] - want.Data[i])
		num += d * d
		den += float64(want.Data[i]) * float64(want.Data[i])
	}
	if rel := math.Sqrt(num / den); rel > 1e-2 || rel == 0 {
		t.Errorf("fp16 emulation rel L2 %g from fp32: want small but nonzero", rel)
	}
}

func TestClampF16(t *testing.T) {
	inf := float32(math.Inf(1))
	tests := []struct {
		name    string
		in, out []float32
	}{
		{"finite values untouched", []float32{-65504, 1.5, 65504}, []float32{-65504, 1.5, 65504}},
		{"an inf clamps everything to 64504", []float32{inf, -inf, 65000, -3}, []float32{64504, -64504, 64504, -3}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := nn.From(append([]float32{}, tc.in...), len(tc.in))
			clampF16(x)
			if diff := cmp.Diff(tc.out, x.Data); diff != "" {
				t.Errorf("clamp (-want +got):\n%s", diff)
			}
		})
	}
}
