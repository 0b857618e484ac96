// clip_pad.go shapes CLIP ids for the text encoder: truncation to the
// 77-token window and padding with the end token, as SD1.x pipelines do.
//
// It deliberately does not chunk long prompts; see prompt_chunks.go for
// A1111's 75-token chunking.
package tokenizer

// PadCLIP returns ids (which must start with the start token and end with the
// end token, as Encode returns them) cut or padded to length n: a longer
// sequence keeps its first n-1 ids and ends with the end token; a shorter one
// is padded with pad (SD1.x uses the end token, 49407).
func PadCLIP(ids []int, n, endID, pad int) []int {
	if n <= 0 {
		return nil
	}
	out := make([]int, n)
	if len(ids) >= n {
		copy(out, ids[:n-1])
		out[n-1] = endID
		return out
	}
	copy(out, ids)
	for i := len(ids); i < n; i++ {
		out[i] = pad
	}
	return out
}

// EncodePadded is Encode truncated/padded to 77 with the end token: the
// input of an SD1.x text encoder for a prompt of at most 75 tokens.
func (c *CLIP) EncodePadded(text string) []int {
	return PadCLIP(c.Encode(text), CLIPMaxLen, c.EndID, c.EndID)
}
