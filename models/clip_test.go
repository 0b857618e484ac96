// clip_test.go tests CLIP text-encoder layout detection, config inference,
// strict binding errors, clip skip, causality and input checks on small
// generated files (the numeric check against transformers is
// golden/run_clip_text_test.go).
package models

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdbridge/sdbridge/nn"
)

const clipLDM = "cond_stage_model.transformer.text_model."

func TestDetectCLIPTextPrefix(t *testing.T) {
	te := vcComponent(clipLDM)
	ids := [][]int{{49, 1, 2, 3, 99, 99, 99, 99}}
	want := func() *nn.Tensor {
		m, err := LoadCLIPText(NewWeights(vcOpen(t, vcPrefixed(clipLDM, te))), CLIPTextOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out, err := m.Encode(ids)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}()
	noPosIDs := vcEdit(te, func(t *vcTensor) bool { return t.I64 == nil })
	corruptPosIDs := vcEdit(te, func(t *vcTensor) bool {
		if t.I64 != nil { // merged files store drifted float position ids
			t.I64, t.F32 = nil, []float32{0.4, 1.6, 2, 3, 4, 5, 6, 7}
		}
		return true
	})
	tests := []struct {
		name    string
		ts      []vcTensor
		want    string
		wantErr string
		noCLIP  bool
	}{
		{name: "ldm checkpoint", ts: vcPrefixed(clipLDM, te), want: clipLDM},
		{name: "old transformers", ts: vcPrefixed("cond_stage_model.transformer.", te), want: "cond_stage_model.transformer."},
		{name: "Hugging Face text_encoder", ts: vcPrefixed("text_model.", noPosIDs), want: "text_model."},
		{name: "bare keys", ts: te, want: ""},
		{name: "corrupt position_ids ignored", ts: vcPrefixed(clipLDM, corruptPosIDs), want: clipLDM},
		{name: "SDXL refused", ts: vcPrefixed("conditioner.embedders.0.transformer.text_model.", te), wantErr: "SDXL"},
		{name: "no text encoder", ts: vcPrefixed("first_stage_model.", vcComponent("first_stage_model.")), wantErr: "no CLIP", noCLIP: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWeights(vcOpen(t, tc.ts))
			got, err := DetectCLIPTextPrefix(w)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
				}
				if errors.Is(err, ErrNoCLIPText) != tc.noCLIP {
					t.Errorf("errors.Is(err, ErrNoCLIPText) = %v, want %v", !tc.noCLIP, tc.noCLIP)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("prefix = %q, want %q", got, tc.want)
			}
			m, err := LoadCLIPText(w, CLIPTextOptions{})
			if err != nil {
				t.Fatal(err)
			}
			out, err := m.Encode(ids)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(want.Data, out.Data); d != "" {
				t.Errorf("output differs from the ldm layout (-want +got):\n%s", d)
			}
		})
	}
}

func TestLoadCLIPTextInfersConfig(t *testing.T) {
	w := NewWeights(vcOpen(t, vcPrefixed(clipLDM, vcComponent(clipLDM))))
	m, err := LoadCLIPText(w, CLIPTextOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := CLIPTextConfig{Vocab: 100, Hidden: 128, Intermediate: 64, Layers: 3, Heads: 2,
		MaxPositions: 8, HiddenAct: "quick_gelu", LayerNormEps: 1e-5}
	if d := cmp.Diff(want, m.Config); d != "" {
		t.Errorf("config (-want +got):\n%s", d)
	}
	// position_ids is deliberately not bound: the only key left over.
	if d := cmp.Diff([]string{clipLDM + "embeddings.position_ids"}, w.Sub(clipLDM).Unused()); d != "" {
		t.Errorf("unused keys (-want +got):\n%s", d)
	}
}

func TestLoadCLIPTextErrors(t *testing.T) {
	base := vcPrefixed(clipLDM, vcComponent(clipLDM))
	drop := func(key string) func(*vcTensor) bool {
		return func(t *vcTensor) bool { return t.Name != key }
	}
	reshape := func(key string, shape ...int) func(*vcTensor) bool {
		return func(t *vcTensor) bool {
			if t.Name == key {
				t.Shape, t.F32 = shape, make([]float32, numelOf(shape))
			}
			return true
		}
	}
	keep := func(*vcTensor) bool { return true }
	tests := []struct {
		name string
		edit func(*vcTensor) bool
		opt  CLIPTextOptions
		want string
	}{
		{"missing v_proj bias", drop(clipLDM + "encoder.layers.1.self_attn.v_proj.bias"), CLIPTextOptions{}, clipLDM + "encoder.layers.1.self_attn.v_proj.bias"},
		{"missing final norm", drop(clipLDM + "final_layer_norm.weight"), CLIPTextOptions{}, clipLDM + "final_layer_norm.weight"},
		{"missing position embedding", drop(clipLDM + "embeddings.position_embedding.weight"), CLIPTextOptions{}, clipLDM + "embeddings.position_embedding.weight"},
		{"mis-shaped fc2", reshape(clipLDM+"encoder.layers.2.mlp.fc2.weight", 128, 32), CLIPTextOptions{}, clipLDM + "encoder.layers.2.mlp.fc2.weight"},
		{"mis-shaped position embedding", reshape(clipLDM+"embeddings.position_embedding.weight", 8, 64), CLIPTextOptions{}, clipLDM + "embeddings.position_embedding.weight"},
		{"1-D token embedding", reshape(clipLDM+"embeddings.token_embedding.weight", 12800), CLIPTextOptions{}, clipLDM + "embeddings.token_embedding.weight"},
		{"heads do not divide", keep, CLIPTextOptions{Heads: 3}, "3 heads do not divide"},
		{"unknown activation", keep, CLIPTextOptions{HiddenAct: "swish"}, `unknown hidden_act "swish"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadCLIPText(NewWeights(vcOpen(t, vcEdit(base, tc.edit))), tc.opt)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestCLIPSkip checks that clip skip k equals running the model cut after
// layers-k+1 layers, and that out-of-range values are refused.
func TestCLIPSkip(t *testing.T) {
	m, err := LoadCLIPText(NewWeights(vcOpen(t, vcComponent(clipLDM))), CLIPTextOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ids := [][]int{{98, 5, 17, 99, 99, 99, 99, 99}, {98, 42, 43, 44, 45, 99, 99, 99}}
	cut := func(n int) *nn.Tensor {
		c := *m
		c.Config.Layers, c.Layers = n, m.Layers[:n]
		out, err := c.Encode(ids)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	tests := []struct {
		skip   int
		layers int
	}{{0, 3}, {1, 3}, {2, 2}, {3, 1}}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("skip%d", tc.skip), func(t *testing.T) {
			got, err := m.EncodeSkip(ids, tc.skip)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(cut(tc.layers).Data, got.Data); d != "" {
				t.Errorf("skip %d differs from a %d-layer model (-want +got):\n%s", tc.skip, tc.layers, d)
			}
		})
	}
	last, _ := m.EncodeSkip(ids, 1)
	pen, _ := m.EncodeSkip(ids, 2)
	if cmp.Equal(last.Data, pen.Data) {
		t.Error("skip 1 and skip 2 give the same output")
	}
	for _, skip := range []int{-1, 4} {
		if _, err := m.EncodeSkip(ids, skip); err == nil || !strings.Contains(err.Error(), "clip skip") {
			t.Errorf("skip %d: err = %v, want an out-of-range error", skip, err)
		}
	}
}

// TestCLIPIsCausal checks that a token only sees the ones before it.
func TestCLIPIsCausal(t *testing.T) {
	m, err := LoadCLIPText(NewWeights(vcOpen(t, vcComponent(clipLDM))), CLIPTextOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := m.Encode([][]int{{98, 5, 17, 30, 99, 99, 99, 99}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Encode([][]int{{98, 5, 17, 31, 99, 99, 99, 99}})
	if err != nil {
		t.Fatal(err)
	}
	c := m.Config.Hidden
	if d := cmp.Diff(a.Data[:3*c], b.Data[:3*c]); d != "" {
		t.Errorf("positions before the change moved (-a +b):\n%s", d)
	}
	for p := 3; p < 8; p++ {
		if cmp.Equal(a.Data[p*c:(p+1)*c], b.Data[p*c:(p+1)*c]) {
			t.Errorf("position %d did not see the change at position 3", p)
		}
	}
}

func TestCLIPEncodeInputErrors(t *testing.T) {
	m, err := LoadCLIPText(NewWeights(vcOpen(t, vcComponent(clipLDM))), CLIPTextOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		ids  [][]int
		want string
	}{
		{"no sequences", nil, "no token sequences"},
		{"empty sequence", [][]int{{}}, "sequence length 0"},
		{"too long", [][]int{make([]int, 9)}, "sequence length 9"},
		{"ragged", [][]int{{1, 2}, {1}}, "sequence 1 has 1 tokens"},
		{"id too large", [][]int{{1, 100}}, "token id 100 at [0][1]"},
		{"negative id", [][]int{{-1}}, "token id -1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.Encode(tc.ids)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
