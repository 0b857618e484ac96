// t5_config_test.go tests config.json parsing: HF defaults, the
// feed_forward_proj grammar, and a fuzz target proving hostile configs give
// errors, never panics.
package models

import (
	"strings"
	"testing"
)

func TestParseT5ConfigFeedForward(t *testing.T) {
	tests := []struct {
		proj      string
		wantGated bool
		wantAct   string
		wantErr   string
	}{
		{proj: "gated-gelu", wantGated: true, wantAct: "gelu_new"}, // HF maps gated-gelu to gelu_new
		{proj: "gated-silu", wantGated: true, wantAct: "silu"},
		{proj: "relu", wantAct: "relu"},
		{proj: "gelu", wantAct: "gelu"}, // non-gated gelu stays exact
		{proj: "gelu_new", wantAct: "gelu_new"},
		{proj: "gated-tanh", wantErr: `unsupported activation "tanh"`},
		{proj: "gated-gelu-x", wantErr: "want ACT or gated-ACT"},
		{proj: "ungated-gelu", wantErr: "want ACT or gated-ACT"},
	}
	for _, tc := range tests {
		t.Run(tc.proj, func(t *testing.T) {
			cfg, err := ParseT5Config([]byte(`{"model_type":"t5","feed_forward_proj":"`+tc.proj+`"}`), "config.json")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			gated, act, err := cfg.feedForward()
			if err != nil || gated != tc.wantGated || act != tc.wantAct {
				t.Errorf("feedForward() = %v, %q, %v; want %v, %q", gated, act, err, tc.wantGated, tc.wantAct)
			}
		})
	}
}

func TestParseT5ConfigDefaults(t *testing.T) {
	// Fields a config omits take configuration_t5.py's defaults.
	cfg, err := ParseT5Config([]byte(`{"model_type":"t5","d_model":2048,"num_heads":32,"d_ff":5120,"num_layers":24}`), "config.json")
	if err != nil {
		t.Fatal(err)
	}
	got := []any{cfg.DKV, cfg.NumBuckets, cfg.MaxDistance, cfg.LayerNormEps, cfg.VocabSize, cfg.FeedForwardProj}
	want := []any{64, 32, 128, 1e-6, 32128, "relu"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("default %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestParseT5ConfigInvalid(t *testing.T) {
	tests := []struct {
		name, json, wantErr string
	}{
		{"not json", `{`, "unexpected end"},
		{"zero heads", `{"model_type":"t5","num_heads":0}`, "num_heads = 0"},
		{"odd buckets", `{"model_type":"t5","relative_attention_num_buckets":31}`, "want an even number"},
		{"max distance too small", `{"model_type":"t5","relative_attention_max_distance":8}`, "must exceed"},
		{"zero eps", `{"model_type":"t5","layer_norm_epsilon":0}`, "layer_norm_epsilon"},
		{"string d_model", `{"model_type":"t5","d_model":"2048"}`, "cannot unmarshal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseT5Config([]byte(tc.json), "config.json")
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func FuzzParseT5Config(f *testing.F) {
	f.Add([]byte(`{"model_type":"t5","d_model":2048,"d_kv":64,"num_heads":32,"d_ff":5120,"num_layers":24,"feed_forward_proj":"gated-gelu"}`))
	f.Add([]byte(`{"model_type":"bert"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ParseT5Config(b, "config.json")
		if err != nil {
			return
		}
		// A config that parses must give usable buckets at any distance.
		for r := -300; r <= 300; r += 7 {
			if k := RelativePositionBucket(r, cfg.NumBuckets, cfg.MaxDistance); k < 0 || k >= cfg.NumBuckets {
				t.Fatalf("bucket(%d) = %d outside [0, %d)", r, k, cfg.NumBuckets)
			}
		}
	})
}
