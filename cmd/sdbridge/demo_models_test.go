package main

import (
	"slices"
	"testing"

	"github.com/sdbridge/sdbridge/inspect"
	"github.com/sdbridge/sdbridge/plugins/lora"
	"github.com/sdbridge/sdbridge/safetensors"
	"github.com/sdbridge/sdbridge/tokenizer"
)

func TestTrainMerges(t *testing.T) {
	m := trainMerges("aaa aaa ab", 2)
	// "a a" occurs 4 times (2 per "aaa" x 2 words); merged first.
	if len(m) != 2 || m[0] != [2]string{"a", "a"} {
		t.Errorf("merges = %v", m)
	}
}

// The demo's files are what they claim to be: an SD1.5 checkpoint whose
// vocabulary matches its tokenizer, a LoRA that applies to it in full, and
// an SD1.5 ControlNet.
func TestDemoModels(t *testing.T) {
	d, err := writeDemoModels(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path, kind string
	}{
		{d.Checkpoint, inspect.KindCheckpoint},
		{d.LoRA, inspect.KindLoRA},
		{d.ControlNet, inspect.KindControlNet},
	}
	for _, tt := range tests {
		r, err := inspect.Path(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind != tt.kind || r.Architecture != "SD1.5" {
			t.Errorf("%s: %s %s, want SD1.5 %s (notes %q)", tt.path, r.Architecture, r.Kind, tt.kind, r.Notes)
		}
		if tt.kind == inspect.KindCheckpoint && !slices.Equal(r.Components, []string{"text_encoder", "unet", "vae"}) {
			t.Errorf("checkpoint components %v", r.Components)
		}
		if tt.kind == inspect.KindCheckpoint && r.CLIP.Vocab != d.VocabSize {
			t.Errorf("checkpoint vocab %d, tokenizer %d", r.CLIP.Vocab, d.VocabSize)
		}
	}
	tok, err := tokenizer.LoadCLIP(d.Vocab, d.Merges)
	if err != nil {
		t.Fatal(err)
	}
	ids := tok.Encode("a photo of a red fox")
	for _, id := range ids {
		if id < 0 || id >= d.VocabSize {
			t.Fatalf("token id %d outside the vocabulary of %d", id, d.VocabSize)
		}
	}
	if len(ids) > 10 {
		t.Errorf("the learned merges do not compress the corpus: %d tokens", len(ids))
	}
	ck, err := safetensors.Open(d.Checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	lf, err := lora.Load(d.LoRA)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if _, err := lora.NewPlan(ck, []lora.Adapter{{File: lf, UNet: 1, TE: 1}}); err != nil {
		t.Errorf("demo LoRA does not apply to the demo checkpoint: %v", err)
	}
}
