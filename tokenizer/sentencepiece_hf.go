// sentencepiece_hf.go loads a Hugging Face tokenizer.json whose model is
// Unigram (T5, FLAN-T5, SD3's tokenizer_3) into the same encoder as
// spiece.model, so both files give the sentencepiece library's ids: the
// vocabulary [piece, score] list, unk_id, byte_fallback, the Precompiled
// charsmap of the normalizer, and the whitespace flags read off the
// normalizer/pre-tokenizer chain (Strip/Replace " {2,}"/WhitespaceSplit =
// remove_extra_whitespaces; Metaspace prepend_scheme != "never" = dummy
// prefix). Added special tokens become CONTROL pieces (never matched from
// text), which is what spiece.model says of <pad> and </s>.
//
// It deliberately does not emulate the tokenizers library's own pipeline
// where it departs from sentencepiece (e.g. leading spaces kept as a lone
// "▁" piece), nor split added tokens out of the text, nor run other model
// types (BPE, WordPiece): those are refused with an error.
package tokenizer

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"regexp"
)

// hfTokenizerJSON is the part of tokenizer.json this loader reads.
type hfTokenizerJSON struct {
	AddedTokens []struct {
		ID      int    `json:"id"`
		Content string `json:"content"`
		Special bool   `json:"special"`
	} `json:"added_tokens"`
	Normalizer    *hfComponent `json:"normalizer"`
	PreTokenizer  *hfComponent `json:"pre_tokenizer"`
	PostProcessor *struct {
		Type   string `json:"type"`
		Single []struct {
			SpecialToken *struct {
				ID string `json:"id"`
			} `json:"SpecialToken"`
		} `json:"single"`
		SpecialTokens map[string]struct {
			IDs []int `json:"ids"`
		} `json:"special_tokens"`
	} `json:"post_processor"`
	Model struct {
		Type         string   `json:"type"`
		UnkID        *int     `json:"unk_id"`
		Vocab        [][2]any `json:"vocab"`
		ByteFallback bool     `json:"byte_fallback"`
	} `json:"model"`
}

// hfComponent is a normalizer or pre-tokenizer node (possibly a Sequence).
type hfComponent struct {
	Type                string         `json:"type"`
	Normalizers         []*hfComponent `json:"normalizers"`
	PreTokenizers       []*hfComponent `json:"pretokenizers"`
	PrecompiledCharsmap string         `json:"precompiled_charsmap"`
	Pattern             *struct {
		String *string `json:"String"`
		Regex  *string `json:"Regex"`
	} `json:"pattern"`
	PrependScheme  string `json:"prepend_scheme"`
	AddPrefixSpace *bool  `json:"add_prefix_space"`
	StripRight     bool   `json:"strip_right"`
}

// walk visits c and every node nested in it.
func (c *hfComponent) walk(fn func(*hfComponent)) {
	if c == nil {
		return
	}
	fn(c)
	for _, n := range c.Normalizers {
		n.walk(fn)
	}
	for _, n := range c.PreTokenizers {
		n.walk(fn)
	}
}

// multiSpace matches a Replace pattern that collapses runs of spaces.
var multiSpace = regexp.MustCompile(`^ ?( |\\s)\{2,\}$|^( |\\s)\+$`)

// LoadSentencePieceJSON reads a Hugging Face tokenizer.json (Unigram model).
func LoadSentencePieceJSON(path string) (*SentencePiece, error) {
	return loadSentencePieceFile(path, ParseHFUnigram)
}

// ParseHFUnigram converts tokenizer.json bytes into a model spec.
func ParseHFUnigram(b []byte) (*SPModelSpec, error) {
	var tj hfTokenizerJSON
	if err := json.Unmarshal(b, &tj); err != nil {
		return nil, fmt.Errorf("tokenizer.json: %w", err)
	}
	if tj.Model.Type != "Unigram" {
		return nil, fmt.Errorf("tokenizer.json: model type %q is not Unigram", tj.Model.Type)
	}
	if tj.Model.UnkID == nil {
		return nil, fmt.Errorf("tokenizer.json: Unigram model without unk_id")
	}
	spec := &SPModelSpec{
		ModelType: 1, UnkID: int32(*tj.Model.UnkID), BosID: -1, EosID: -1, PadID: -1,
		ByteFallback: tj.Model.ByteFallback, EscapeWhitespaces: true,
	}
	special := map[int]bool{}
	byContent := map[string]int{}
	for _, at := range tj.AddedTokens {
		if at.Special {
			special[at.ID] = true
		}
		byContent[at.Content] = at.ID
	}
	spec.Pieces = make([]SPPiece, len(tj.Model.Vocab))
	for i, e := range tj.Model.Vocab {
		piece, ok1 := e[0].(string)
		score, ok2 := e[1].(float64)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("tokenizer.json: vocab entry %d is not [string, number]", i)
		}
		p := SPPiece{Piece: piece, Score: float32(score), Type: PieceNormal}
		var bv int
		switch {
		case i == *tj.Model.UnkID:
			p.Type = PieceUnknown
		case special[i]:
			p.Type = PieceControl
		case spec.ByteFallback && len(piece) == 6 && isBytePiece(piece, &bv):
			p.Type = PieceByte
		}
		spec.Pieces[i] = p
	}
	if id, ok := byContent["<pad>"]; ok {
		spec.PadID = int32(id)
	}
	spec.EosID = hfEOS(&tj, byContent)

	var charsmapB64 string
	sawCharsmap := false
	tj.Normalizer.walk(func(c *hfComponent) {
		switch c.Type {
		case "Precompiled":
			charsmapB64, sawCharsmap = c.PrecompiledCharsmap, true
		case "Strip":
			spec.RemoveExtraWhitespaces = spec.RemoveExtraWhitespaces || c.StripRight
		case "Replace":
			if c.Pattern != nil {
				for _, p := range []*string{c.Pattern.String, c.Pattern.Regex} {
					if p != nil && multiSpace.MatchString(*p) {
						spec.RemoveExtraWhitespaces = true
					}
				}
			}
		}
	})
	sawMetaspace := false
	tj.PreTokenizer.walk(func(c *hfComponent) {
		switch c.Type {
		case "WhitespaceSplit", "Whitespace":
			spec.RemoveExtraWhitespaces = true
		case "Metaspace":
			sawMetaspace = true
			switch {
			case c.PrependScheme != "":
				spec.AddDummyPrefix = c.PrependScheme != "never"
			case c.AddPrefixSpace != nil:
				spec.AddDummyPrefix = *c.AddPrefixSpace
			default:
				spec.AddDummyPrefix = true
			}
		}
	})
	if !sawMetaspace {
		return nil, fmt.Errorf("tokenizer.json: no Metaspace pre-tokenizer; not a SentencePiece-style Unigram tokenizer")
	}
	if sawCharsmap {
		cm, err := base64.StdEncoding.DecodeString(charsmapB64)
		if err != nil {
			return nil, fmt.Errorf("tokenizer.json: precompiled_charsmap: %w", err)
		}
		spec.PrecompiledCharsmap = cm
	}
	return spec, nil
}

// isBytePiece parses "<0xHH>".
func isBytePiece(s string, v *int) bool {
	_, err := fmt.Sscanf(s, "<0x%02X>", v)
	return err == nil
}

// hfEOS finds the token the post-processor appends (T5: </s>), else </s>.
func hfEOS(tj *hfTokenizerJSON, byContent map[string]int) int32 {
	if pp := tj.PostProcessor; pp != nil && pp.Type == "TemplateProcessing" {
		for _, s := range pp.Single {
			if s.SpecialToken == nil {
				continue
			}
			if st, ok := pp.SpecialTokens[s.SpecialToken.ID]; ok && len(st.IDs) == 1 {
				return int32(st.IDs[0])
			}
			if id, ok := byContent[s.SpecialToken.ID]; ok {
				return int32(id)
			}
		}
		return -1
	}
	if id, ok := byContent["</s>"]; ok {
		return int32(id)
	}
	return -1
}
