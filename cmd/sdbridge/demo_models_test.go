package main

import (
	"slices"
	"testing"

	"github.com/sdbridge/sdbridge/inspect"
	"github.com/sdbridge/sdbridge/models"
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

// The demo's T5 folder loads with its tokenizer, and the ELLA connector
// fits both the T5 width and the U-Net context width.
func TestDemoT5AndELLA(t *testing.T) {
	d, err := writeDemoModels(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.LoadT5Tokenizer(d.T5)
	if err != nil {
		t.Fatal(err)
	}
	ids := tok.Encode("a red fox in a forest")
	if len(ids) != 7 || ids[len(ids)-1] != 1 {
		t.Errorf("ids = %v, want 6 word pieces and EOS 1", ids)
	}
	enc, err := models.LoadT5Encoder(d.T5)
	if err != nil {
		t.Fatal(err)
	}
	e, err := models.OpenELLA(d.ELLA, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.CheckInputDim(enc.Config.DModel); err != nil {
		t.Error(err)
	}
	if err := e.CheckContextDim(models.Tiny(d.VocabSize).ContextDim); err != nil {
		t.Error(err)
	}
	r, err := inspect.Path(d.ELLA)
	if err != nil || r.Kind != inspect.KindELLA {
		t.Errorf("inspect(ella) = %+v, %v", r, err)
	}
}
