// sentencepiece_normalize.go is SentencePiece's text normaliser: lookup in
// the precompiled charsmap (a darts-clone double-array trie over UTF-8 bytes
// whose values index NUL-terminated replacement strings — for T5 the nmt_nfkc
// rules: NFKC, control characters dropped, every whitespace kind to a space),
// then the whitespace handling of normalizer.cc (leading/trailing/repeated
// spaces removed, dummy prefix, spaces escaped as U+2581).
//
// It deliberately does not keep the normalised-to-original offset map (no
// caller needs surface spans) nor support user-defined-symbol protection or
// treat_whitespace_as_suffix (T5 uses neither; the loader refuses the latter).
package tokenizer

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"
)

// spaceSymbol is U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's visible space.
const spaceSymbol = "\u2581"

// charsmap is a parsed precompiled charsmap.
type charsmap struct {
	units []uint32 // darts-clone double array
	repl  []byte   // NUL-terminated replacement strings
}

// maxTrieResults mirrors normalizer.cc's kMaxTrieResultsSize: only the first
// 32 prefix matches are considered when looking for the longest.
const maxTrieResults = 32

// parseCharsmap splits blob = u32le trie size | trie | replacement strings.
func parseCharsmap(blob []byte) (*charsmap, error) {
	if len(blob) == 0 {
		return nil, nil
	}
	if len(blob) < 4 {
		return nil, fmt.Errorf("precompiled charsmap: %d bytes, too short", len(blob))
	}
	size := binary.LittleEndian.Uint32(blob)
	if uint64(size) > uint64(len(blob)-4) || size%4 != 0 || size == 0 {
		return nil, fmt.Errorf("precompiled charsmap: trie size %d does not fit %d bytes", size, len(blob))
	}
	trie := blob[4 : 4+size]
	cm := &charsmap{units: make([]uint32, size/4), repl: blob[4+size:]}
	for i := range cm.units {
		cm.units[i] = binary.LittleEndian.Uint32(trie[4*i:])
	}
	return cm, nil
}

// Darts-clone unit fields.
func unitHasLeaf(u uint32) bool  { return (u>>8)&1 == 1 }
func unitValue(u uint32) uint32  { return u & 0x7FFFFFFF }
func unitLabel(u uint32) uint32  { return u & 0x800000FF }
func unitOffset(u uint32) uint32 { return (u >> 10) << ((u & (1 << 9)) >> 6) }

// longestMatch runs darts-clone's commonPrefixSearch over s and returns the
// byte length and value of the longest of the first 32 matches (0, 0: none).
func (cm *charsmap) longestMatch(s string) (length int, value uint32) {
	a := cm.units
	pos := unitOffset(a[0])
	found := 0
	for i := 0; i < len(s); i++ {
		c := uint32(s[i])
		pos ^= c
		if int(pos) >= len(a) {
			return
		}
		u := a[pos]
		if unitLabel(u) != c {
			return
		}
		pos ^= unitOffset(u)
		if unitHasLeaf(u) && int(pos) < len(a) {
			if found < maxTrieResults && i+1 > length {
				length, value = i+1, unitValue(a[pos])
			}
			found++
		}
	}
	return
}

// normalizePrefix returns the normalised form of the start of s and how many
// bytes of s it consumes: the longest charsmap rule, else one UTF-8
// character unchanged, else (a malformed byte) U+FFFD consuming one byte.
func (cm *charsmap) normalizePrefix(s string) (string, int) {
	if cm != nil {
		if n, v := cm.longestMatch(s); n > 0 {
			if int(v) >= len(cm.repl) {
				return "", n // out-of-range value in a damaged map: drop the match
			}
			r := cm.repl[v:]
			if end := indexByte(r, 0); end >= 0 {
				r = r[:end]
			}
			return string(r), n
		}
	}
	r, size := utf8.DecodeRuneInString(s)
	if r == utf8.RuneError && size <= 1 {
		return "\uFFFD", 1
	}
	return s[:size], size
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// spNormalizer holds the normalizer spec flags.
type spNormalizer struct {
	cm                *charsmap
	addDummyPrefix    bool
	removeExtraSpaces bool
	escapeWhitespaces bool
}

// normalize is Normalizer::Normalize of normalizer.cc without the offset map.
func (n *spNormalizer) normalize(text string) string {
	if n.removeExtraSpaces {
		for len(text) > 0 {
			r, used := n.cm.normalizePrefix(text)
			if r != " " {
				break
			}
			text = text[used:]
		}
	}
	if text == "" {
		return ""
	}
	space := " "
	if n.escapeWhitespaces {
		space = spaceSymbol
	}
	var sb strings.Builder
	sb.Grow(len(text) + len(text)/2 + 3)
	if n.addDummyPrefix {
		sb.WriteString(space)
	}
	prevSpace := n.removeExtraSpaces
	for len(text) > 0 {
		r, used := n.cm.normalizePrefix(text)
		if prevSpace {
			r = strings.TrimLeft(r, " ")
		}
		if r != "" {
			if n.escapeWhitespaces {
				sb.WriteString(strings.ReplaceAll(r, " ", spaceSymbol))
			} else {
				sb.WriteString(r)
			}
			prevSpace = strings.HasSuffix(r, " ")
		}
		text = text[used:]
		if !n.removeExtraSpaces {
			prevSpace = false
		}
	}
	out := sb.String()
	if n.removeExtraSpaces {
		for strings.HasSuffix(out, space) {
			out = out[:len(out)-len(space)]
		}
	}
	return out
}
