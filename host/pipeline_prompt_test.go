// pipeline_prompt_test.go checks the two prompt modes on the golden tiny
// checkpoint's CLIP (skipped when the shared golden set is absent): a plain
// short prompt encodes the same in both, a long one becomes two 77-token
// windows in A1111 mode and is cut to 77 in the reference mode, and an
// emphasis changes the context.
package host

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/safetensors"
	"github.com/sdbridge/sdbridge/tokenizer"
)

func goldenCLIP(t *testing.T) (*tokenizer.CLIP, *models.CLIPTextModel) {
	t.Helper()
	root := os.Getenv("SDBRIDGE_GOLDEN_DIR")
	if root == "" {
		root = filepath.Join("..", "..", "shared", "golden")
	}
	ckpt := filepath.Join(root, "models", "sd15-tiny.safetensors")
	if _, err := os.Stat(ckpt); err != nil {
		t.Skipf("golden tiny checkpoint not found (%v)", err)
	}
	tok, err := tokenizer.LoadCLIP(filepath.Join(root, "data", "clip", "vocab.json"), filepath.Join(root, "data", "clip", "merges.txt"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(ckpt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	m, err := models.LoadCLIPText(models.NewWeights(f), models.CLIPTextOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tok, m
}

func TestPromptModes(t *testing.T) {
	tok, m := goldenCLIP(t)
	ctx := context.Background()
	a1111 := &CLIPPrompts{Tokenizer: tok, Model: m, Mode: PromptA1111}
	plain := &CLIPPrompts{Tokenizer: tok, Model: m, Mode: PromptTruncate}
	long := strings.Repeat("a photo of a red cat on a mat ", 12) // ~96 tokens

	for _, tc := range []struct {
		name            string
		prompt          string
		a1111Len, plLen int
		same            bool
	}{
		{"short plain", "a photo of a cat", 77, 77, true},
		{"long", long, 154, 77, false},
		{"emphasis", "a photo of a (cat:1.5)", 77, 77, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			za, err := a1111.EncodePrompt(ctx, tc.prompt)
			if err != nil {
				t.Fatal(err)
			}
			zp, err := plain.EncodePrompt(ctx, tc.prompt)
			if err != nil {
				t.Fatal(err)
			}
			if za.Shape[1] != tc.a1111Len || zp.Shape[1] != tc.plLen {
				t.Fatalf("lengths %d (A1111), %d (plain); want %d, %d", za.Shape[1], zp.Shape[1], tc.a1111Len, tc.plLen)
			}
			if tc.a1111Len != tc.plLen {
				return
			}
			diff := 0.0
			for i := range za.Data {
				diff = max(diff, float64(abs32(za.Data[i]-zp.Data[i])))
			}
			if tc.same && diff > 1e-6 {
				t.Errorf("modes differ by %g on a plain prompt", diff)
			}
			if !tc.same && diff < 1e-4 {
				t.Errorf("modes agree (max diff %g) where the A1111 syntax should change the context", diff)
			}
		})
	}
	skip2 := &CLIPPrompts{Tokenizer: tok, Model: m, Mode: PromptTruncate, ClipSkip: 2}
	z1, _ := plain.EncodePrompt(ctx, "cat")
	z2, err := skip2.EncodePrompt(ctx, "cat")
	if err != nil {
		t.Fatal(err)
	}
	if z1.Data[100] == z2.Data[100] {
		t.Error("clip skip 2 gives the same context as clip skip 1")
	}
}

func abs32(v float32) float32 {
	if v < 0 {
		return -v
	}
	return v
}
