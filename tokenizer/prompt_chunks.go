// prompt_chunks.go turns an A1111-syntax prompt into CLIP token windows the
// way AUTOMATIC1111's FrozenCLIPEmbedderWithCustomWords.tokenize_line does:
//
//   - each parsed fragment (prompt.go) is tokenized on its own, without
//     start/end tokens; every token carries its fragment's weight;
//   - tokens fill chunks of 75; a full chunk is closed and a new one begun;
//   - comma backtrack: when a chunk is full and the next token is not a
//     comma, and a comma ",</w>" was seen at most CommaBacktrack (default
//     20) tokens before the end of the chunk, the tokens after that comma
//     move to the next chunk (the full chunk is padded instead), so a phrase
//     is not cut in two;
//   - BREAK closes the current chunk (padded) even if it is not full; a
//     BREAK on an empty chunk still emits a padding-only chunk;
//   - each chunk becomes 77 ids: start, its 75 tokens padded with the end
//     token, end; start, end and padding have weight 1.0;
//   - chunks are concatenated: k chunks give 77*k ids, and the text
//     encoder's outputs for each window are concatenated along the sequence
//     (A1111's behaviour for prompts over 75 tokens). An empty prompt gives
//     one chunk.
//
// It deliberately does not run the text encoder or apply the weights (see
// prompt_emphasis.go), nor handle textual-inversion embeddings.
package tokenizer

// A1111Options tunes EncodeA1111.
type A1111Options struct {
	// CommaBacktrack is A1111's "comma_padding_backtrack": 0 means the
	// default 20; a negative value turns the backtrack off.
	CommaBacktrack int
	// NoEmphasis treats the prompt as plain text (A1111 emphasis "None").
	NoEmphasis bool
}

// WeightedTokens is an encoded A1111 prompt.
type WeightedTokens struct {
	IDs     []int     // 77 * Chunks ids
	Weights []float32 // one per id
	Chunks  int
	// TokenCount is A1111's count shown in the UI: 75 per closed chunk plus
	// the tokens of the last one.
	TokenCount int
}

// EncodeA1111 tokenizes prompt with A1111's emphasis syntax and chunking.
func (c *CLIP) EncodeA1111(prompt string, opt A1111Options) WeightedTokens {
	backtrack := opt.CommaBacktrack
	if backtrack == 0 {
		backtrack = 20
	}
	parsed := []WeightedText{{Text: prompt, Weight: 1}}
	if !opt.NoEmphasis {
		parsed = ParsePromptAttention(prompt)
	}
	comma, hasComma := c.vocab[","+clipEOW]

	var out WeightedTokens
	var toks []int
	var mults []float32
	lastComma := -1
	nextChunk := func(isLast bool) {
		if isLast {
			out.TokenCount += len(toks)
		} else {
			out.TokenCount += CLIPChunkLen
		}
		out.IDs = append(out.IDs, c.StartID)
		out.Weights = append(out.Weights, 1)
		out.IDs = append(out.IDs, toks...)
		out.Weights = append(out.Weights, mults...)
		for range CLIPChunkLen - len(toks) {
			out.IDs = append(out.IDs, c.EndID)
			out.Weights = append(out.Weights, 1)
		}
		out.IDs = append(out.IDs, c.EndID)
		out.Weights = append(out.Weights, 1)
		out.Chunks++
		toks, mults, lastComma = nil, nil, -1
	}
	for _, frag := range parsed {
		if frag.Break && frag.Text == "BREAK" && frag.Weight == -1 {
			nextChunk(false)
			continue
		}
		w := float32(frag.Weight)
		for _, tok := range c.EncodeBody(frag.Text) {
			if hasComma && tok == comma {
				lastComma = len(toks)
			} else if backtrack > 0 && len(toks) == CLIPChunkLen && lastComma != -1 && len(toks)-lastComma <= backtrack {
				at := lastComma + 1
				relocT := append([]int(nil), toks[at:]...)
				relocM := append([]float32(nil), mults[at:]...)
				toks, mults = toks[:at], mults[:at]
				nextChunk(false)
				toks, mults = relocT, relocM
			}
			if len(toks) == CLIPChunkLen {
				nextChunk(false)
			}
			toks = append(toks, tok)
			mults = append(mults, w)
		}
	}
	if len(toks) > 0 || out.Chunks == 0 {
		nextChunk(true)
	}
	return out
}

// PadChunks appends padding-only chunks (start, 76 end tokens, weights 1)
// until w has n chunks: A1111 does this when the prompt and the negative
// prompt have different chunk counts and they are batched together.
func (c *CLIP) PadChunks(w WeightedTokens, n int) WeightedTokens {
	for w.Chunks < n {
		w.IDs = append(w.IDs, c.StartID)
		w.Weights = append(w.Weights, 1)
		for range CLIPMaxLen - 1 {
			w.IDs = append(w.IDs, c.EndID)
			w.Weights = append(w.Weights, 1)
		}
		w.Chunks++
	}
	return w
}
