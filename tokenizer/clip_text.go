// clip_text.go prepares text for CLIP BPE the way Hugging Face's
// CLIPTokenizer (transformers 5, tokenizers backend) does — the behaviour the
// golden corpus follows: Unicode NFC, every run of whitespace to one space,
// lower-casing; then the pre-tokenizer regex of OpenAI's simple_tokenizer
// written out as a scanner, and the reversible bytes-to-unicode mapping.
//
// It deliberately does not apply ftfy's repairs nor the slow tokenizer's
// BasicTokenizer fallback (which drops format characters such as U+200D and
// isolates CJK ideographs): the corpus shows neither.
package tokenizer

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// clipCleanText is the normalizer Sequence[NFC, Replace(\s+ -> " "),
// Lowercase] of HF's CLIP tokenizer.json. Invalid UTF-8 bytes become U+FFFD, as Python decoding with
// errors="replace" would.
func clipCleanText(text string) string {
	if !utf8.ValidString(text) {
		text = strings.ToValidUTF8(text, "\uFFFD")
	}
	text = norm.NFC.String(text)
	var sb strings.Builder
	sb.Grow(len(text))
	space := false
	for _, r := range text {
		if isRegexSpace(r) {
			if !space {
				sb.WriteByte(' ')
			}
			space = true
			continue
		}
		space = false
		sb.WriteRune(r)
	}
	return unicodeLower(sb.String())
}

// unicodeLower is the tokenizers library's Lowercase: each character's full
// lower-case mapping on its own (Rust char::to_lowercase). It differs from
// Go's ToLower only for U+0130, which becomes "i" + U+0307; there is no
// final-sigma context rule, so capital sigma is always U+03C3.
func unicodeLower(s string) string {
	if strings.ContainsRune(s, 0x130) {
		s = strings.ReplaceAll(s, "\u0130", "i\u0307")
	}
	return strings.ToLower(s)
}

// clipContractions are the contraction alternatives of the pattern, in order.
var clipContractions = []string{"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"}

// clipPreTokenize splits cleaned text the way the regex
//
//	<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
//
// does with leftmost-first alternation: at each position the first matching
// alternative wins; characters matching none (whitespace) are skipped.
func clipPreTokenize(text string) []string {
	var out []string
	for i := 0; i < len(text); {
		rest := text[i:]
		n := 0
		switch {
		case strings.HasPrefix(rest, clipStartText):
			n = len(clipStartText)
		case strings.HasPrefix(rest, clipEndText):
			n = len(clipEndText)
		}
		if n == 0 {
			for _, c := range clipContractions {
				if strings.HasPrefix(rest, c) {
					n = len(c)
					break
				}
			}
		}
		if n == 0 {
			r, size := utf8.DecodeRuneInString(rest)
			switch {
			case unicode.IsLetter(r):
				n = runLen(rest, unicode.IsLetter)
			case unicode.IsNumber(r):
				n = size
			case isRegexSpace(r):
				i += size
				continue
			default:
				n = runLen(rest, func(r rune) bool {
					return !isRegexSpace(r) && !unicode.IsLetter(r) && !unicode.IsNumber(r)
				})
			}
		}
		out = append(out, text[i:i+n])
		i += n
	}
	return out
}

// isRegexSpace is \s of the Rust regex crate (Unicode White_Space), which
// is exactly Go's unicode.IsSpace.
func isRegexSpace(r rune) bool { return unicode.IsSpace(r) }

// runLen is the byte length of the longest prefix of s whose runes satisfy f
// (at least one rune, which the caller has checked).
func runLen(s string, f func(rune) bool) int {
	n := 0
	for n < len(s) {
		r, size := utf8.DecodeRuneInString(s[n:])
		if n > 0 && !f(r) {
			break
		}
		n += size
	}
	return n
}

// byteToRune is GPT-2/CLIP's bytes_to_unicode table: printable Latin-1 bytes
// map to themselves, the other 68 bytes to U+0100 onwards in byte order.
// runeToByte is its inverse.
var byteToRune, runeToByte = buildByteTables()

func buildByteTables() ([256]rune, map[rune]byte) {
	var fwd [256]rune
	inv := make(map[rune]byte, 256)
	next := rune(256)
	for b := range 256 {
		printable := (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
		if printable {
			fwd[b] = rune(b)
		} else {
			fwd[b] = next
			next++
		}
		inv[fwd[b]] = byte(b)
	}
	return fwd, inv
}

// byteOrder lists the byte symbols in OpenAI's vocabulary order: the
// printable bytes first (ascending), then the remapped ones.
func byteOrder() []rune {
	var out []rune
	var rest []rune
	for b := range 256 {
		if byteToRune[b] == rune(b) {
			out = append(out, rune(b))
		} else {
			rest = append(rest, byteToRune[b])
		}
	}
	return append(out, rest...)
}

// byteEncode maps each UTF-8 byte of s to its symbol.
func byteEncode(s string) string {
	var sb strings.Builder
	sb.Grow(len(s) * 2)
	for i := 0; i < len(s); i++ {
		sb.WriteRune(byteToRune[s[i]])
	}
	return sb.String()
}

// byteDecode is the inverse of byteEncode; runes outside the table are kept.
func byteDecode(s string) string {
	b := make([]byte, 0, len(s))
	for _, r := range s {
		if v, ok := runeToByte[r]; ok {
			b = append(b, v)
		} else {
			b = utf8.AppendRune(b, r)
		}
	}
	return string(b)
}
