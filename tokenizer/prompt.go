// prompt.go parses AUTOMATIC1111's attention ("emphasis") syntax into text
// fragments with weights, following prompt_parser.parse_prompt_attention:
//
//	(text)        weight x 1.1              ((text)) x 1.21, and so on
//	[text]        weight / 1.1
//	(text:1.5)    weight x 1.5              (only round brackets take a number)
//	\( \) \[ \]   literal brackets; "\\" a literal backslash; a lone "\" is dropped
//	BREAK         (upper case, a whole word) ends the current 75-token chunk
//
// Nesting multiplies. BREAK inside brackets is not a break (A1111 compares
// its multiplied weight with -1) but the word "break" with a negative weight:
// kept as A1111 has it. A bracket left open applies its multiplier to the rest
// of the prompt; a closing bracket with nothing open is literal text. Weights
// multiply in float64 as Python does, so (((a))) is 1.3310000000000004, and
// adjacent fragments with exactly equal weights are merged. An empty prompt
// yields one empty fragment of weight 1.
//
// Departures from A1111, deliberate: a weight A1111's float() would reject
// (e.g. "(a:.)", which crashes A1111) is kept as literal text; \s and \b are
// Go's ASCII classes where A1111's are Unicode.
//
// It deliberately does not handle prompt editing ([a:b:0.5]), alternation
// ([a|b]), LoRA tags (<lora:name:1>) or textual-inversion embeddings: those
// are resolved, or stripped, before this parser by the caller (A1111 does the
// same in separate passes).
package tokenizer

import (
	"errors"
	"regexp"
	"strconv"
)

// WeightedText is one fragment of a parsed prompt.
type WeightedText struct {
	Text   string
	Weight float64
	Break  bool // a BREAK marker (Text "BREAK", Weight -1 in A1111)
}

// A1111's bracket multipliers.
const (
	RoundBracketMultiplier  = 1.1
	SquareBracketMultiplier = 1 / 1.1
)

// reAttention is prompt_parser.re_attention, alternatives in the same order.
var reAttention = regexp.MustCompile(`\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:`)

// reBreak is prompt_parser.re_break.
var reBreak = regexp.MustCompile(`\s*\bBREAK\b\s*`)

// ParsePromptAttention splits prompt into weighted fragments.
func ParsePromptAttention(prompt string) []WeightedText {
	var res []WeightedText
	var round, square []int
	multiplyRange := func(start int, m float64) {
		for p := start; p < len(res); p++ {
			res[p].Weight *= m
		}
	}
	pop := func(s *[]int) int {
		v := (*s)[len(*s)-1]
		*s = (*s)[:len(*s)-1]
		return v
	}
	for _, m := range reAttention.FindAllStringSubmatchIndex(prompt, -1) {
		text := prompt[m[0]:m[1]]
		hasWeight := m[2] >= 0
		switch {
		case text[0] == '\\':
			res = append(res, WeightedText{Text: text[1:], Weight: 1})
		case text == "(":
			round = append(round, len(res))
		case text == "[":
			square = append(square, len(res))
		case hasWeight && len(round) > 0:
			w, err := strconv.ParseFloat(prompt[m[2]:m[3]], 64)
			if errors.Is(err, strconv.ErrRange) {
				err = nil // Python's float() gives inf or 0 too
			}
			if err != nil {
				res = append(res, WeightedText{Text: text, Weight: 1})
				continue
			}
			multiplyRange(pop(&round), w)
		case text == ")" && len(round) > 0:
			multiplyRange(pop(&round), RoundBracketMultiplier)
		case text == "]" && len(square) > 0:
			multiplyRange(pop(&square), SquareBracketMultiplier)
		default:
			parts := reBreak.Split(text, -1)
			for i, part := range parts {
				if i > 0 {
					res = append(res, WeightedText{Text: "BREAK", Weight: -1, Break: true})
				}
				res = append(res, WeightedText{Text: part, Weight: 1})
			}
		}
	}
	for _, p := range round {
		multiplyRange(p, RoundBracketMultiplier)
	}
	for _, p := range square {
		multiplyRange(p, SquareBracketMultiplier)
	}
	if len(res) == 0 {
		res = []WeightedText{{Text: "", Weight: 1}}
	}
	// A BREAK inside brackets had its -1 multiplied: A1111 then no longer
	// recognises it and the word is ordinary text with that (negative) weight.
	for i := range res {
		if res[i].Break && res[i].Weight != -1 {
			res[i].Break = false
		}
	}
	// Merge runs of identical weights, as A1111 does (a real BREAK, weight -1,
	// always sits between fragments of weight +1 times the same factors).
	out := res[:1]
	for _, r := range res[1:] {
		last := &out[len(out)-1]
		if r.Weight == last.Weight {
			last.Text += r.Text
			last.Break = false
			continue
		}
		out = append(out, r)
	}
	return out
}
