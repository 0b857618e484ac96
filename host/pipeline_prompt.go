// pipeline_prompt.go turns prompt text into the context the U-Net attends to
// with the host's own CLIP text encoder, in one of two modes:
//
//   - PromptA1111 (the default for generation): AUTOMATIC1111's syntax
//     ((word:1.2), [word], BREAK), 75-token chunks each framed to 77 ids and
//     encoded on its own, the emphasis weights applied per chunk with the
//     mean restored ("Original"), chunks concatenated along the sequence;
//   - PromptTruncate: the plain reference behaviour (transformers / the golden
//     cases): ids with start and end tokens, cut to 77, padded with the end
//     token, no syntax.
//
// It does not run ELLA or any plugin (a Conditioner replaces the context for
// those), and it does not resolve textual-inversion embeddings or LoRA tags.
package host

import (
	"context"
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/tokenizer"
)

// PromptMode selects how prompt text becomes token ids.
type PromptMode int

const (
	PromptA1111    PromptMode = iota // A1111 emphasis syntax and 75-token chunks
	PromptTruncate                   // plain text, truncated to 77 ids
)

// PromptEncoder turns a prompt into a context [1, L, D].
type PromptEncoder interface {
	EncodePrompt(ctx context.Context, prompt string) (*nn.Tensor, error)
}

// CLIPPrompts encodes prompts with a CLIP tokenizer and text model.
type CLIPPrompts struct {
	Tokenizer *tokenizer.CLIP
	Model     TextEncoder // *models.CLIPTextModel or its CUDA twin
	ClipSkip  int         // 0 or 1: last layer; 2: penultimate (A1111 "Clip skip")
	Mode      PromptMode
}

// EncodePrompt implements PromptEncoder.
func (p *CLIPPrompts) EncodePrompt(ctx context.Context, prompt string) (*nn.Tensor, error) {
	if p.Tokenizer == nil || p.Model == nil {
		return nil, fmt.Errorf("prompt: no CLIP tokenizer or text model")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if p.Mode == PromptTruncate {
		ids := p.Tokenizer.EncodePadded(prompt)                // [77]
		z, err := p.Model.EncodeSkip([][]int{ids}, p.ClipSkip) // [1, 77, D]
		if err != nil {
			return nil, fmt.Errorf("prompt: %w", err)
		}
		return z, nil
	}
	wt := p.Tokenizer.EncodeA1111(prompt, tokenizer.A1111Options{})
	n := tokenizer.CLIPMaxLen
	chunks := make([]*nn.Tensor, wt.Chunks)
	for k := range wt.Chunks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		z, err := p.Model.EncodeSkip([][]int{wt.IDs[k*n : (k+1)*n]}, p.ClipSkip) // [1, 77, D]
		if err != nil {
			return nil, fmt.Errorf("prompt: chunk %d: %w", k, err)
		}
		if err := tokenizer.ApplyEmphasis(z.Data, wt.Weights[k*n:(k+1)*n], z.Shape[2], tokenizer.EmphasisOriginal); err != nil {
			return nil, fmt.Errorf("prompt: chunk %d: %w", k, err)
		}
		chunks[k] = z
	}
	return nn.Concat(1, chunks...), nil // [1, 77*chunks, D]
}
