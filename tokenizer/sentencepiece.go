// sentencepiece.go is the SentencePiece unigram encoder of T5 / FLAN-T5:
// normalise (sentencepiece_normalize.go), then the Viterbi segmentation of
// unigram_model.cc's optimized encoder over piece scores, with the unknown
// penalty, runs of unknown pieces merged into one <unk>, optional byte
// fallback, and EOS appended. Loaders: spiece.model (LoadSentencePiece) and
// Hugging Face tokenizer.json (sentencepiece_hf.go).
//
// It deliberately does not implement sampling / n-best, BPE-type models,
// decoding beyond piece concatenation, nor HF's slow T5Tokenizer habit of
// turning literal "</s>" or "<extra_id_N>" in the text into special ids
// (sentencepiece, the reference, treats them as text).
package tokenizer

import (
	"fmt"
	"math"
	"os"
	"strings"
	"unicode/utf8"
)

// T5 special ids (spiece.model trainer spec).
const (
	T5PadID = 0
	T5EOSID = 1
	T5UnkID = 2
)

// unkPenalty is unigram_model.h's kUnkPenalty.
const unkPenalty float32 = 10

// SentencePiece is a loaded unigram model. It is safe for concurrent use.
type SentencePiece struct {
	pieces []SPPiece
	// prefixes maps every prefix of every matchable piece to its id, or -1
	// when the prefix is not itself a piece (a byte trie flattened to a map).
	prefixes map[string]int32
	norm     spNormalizer

	minScore, maxScore float32
	byteFallback       bool
	byteIDs            [256]int32

	UnkID int // id of the unknown piece
	EOSID int // appended by Encode; -1 for none
	PadID int // -1 when the model has none
}

// LoadSentencePiece reads a spiece.model file.
func LoadSentencePiece(path string) (*SentencePiece, error) {
	return loadSentencePieceFile(path, ParseSPModel)
}

// loadSentencePieceFile reads path, decodes it with parse and builds the
// encoder; errors name the file.
func loadSentencePieceFile(path string, parse func([]byte) (*SPModelSpec, error)) (*SentencePiece, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("sentencepiece: %w", err)
	}
	spec, err := parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	sp, err := NewSentencePiece(spec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return sp, nil
}

// NewSentencePiece builds the encoder from a decoded model.
func NewSentencePiece(spec *SPModelSpec) (*SentencePiece, error) {
	if spec.ModelType != 1 {
		return nil, fmt.Errorf("sentencepiece: model type %d is not UNIGRAM (1)", spec.ModelType)
	}
	if spec.WhitespaceAsSfx {
		return nil, fmt.Errorf("sentencepiece: treat_whitespace_as_suffix is not supported")
	}
	cm, err := parseCharsmap(spec.PrecompiledCharsmap)
	if err != nil {
		return nil, fmt.Errorf("sentencepiece: %w", err)
	}
	n := len(spec.Pieces)
	inRange := func(id int32) bool { return id >= 0 && int(id) < n }
	sp := &SentencePiece{
		pieces:   spec.Pieces,
		prefixes: make(map[string]int32, 5*n),
		norm: spNormalizer{
			cm:                cm,
			addDummyPrefix:    spec.AddDummyPrefix,
			removeExtraSpaces: spec.RemoveExtraWhitespaces,
			escapeWhitespaces: spec.EscapeWhitespaces,
		},
		minScore:     math.MaxFloat32,
		maxScore:     math.SmallestNonzeroFloat32 * (1 << 23), // FLT_MIN, as the C++ starts from
		byteFallback: spec.ByteFallback,
		UnkID:        int(spec.UnkID),
		EOSID:        -1,
		PadID:        -1,
	}
	if !inRange(spec.UnkID) || spec.Pieces[spec.UnkID].Type != PieceUnknown {
		return nil, fmt.Errorf("sentencepiece: unk_id %d is not an UNKNOWN piece", spec.UnkID)
	}
	if inRange(spec.EosID) {
		sp.EOSID = int(spec.EosID)
	}
	if inRange(spec.PadID) {
		sp.PadID = int(spec.PadID)
	}
	for i := range sp.byteIDs {
		sp.byteIDs[i] = -1
	}
	for i, p := range spec.Pieces {
		switch p.Type {
		case PieceNormal, PieceUserDefined, PieceUnused:
			if p.Piece == "" {
				return nil, fmt.Errorf("sentencepiece: piece %d is empty", i)
			}
			if id, ok := sp.prefixes[p.Piece]; ok && id >= 0 {
				return nil, fmt.Errorf("sentencepiece: piece %q (%d) is already defined as %d", p.Piece, i, id)
			}
			for k := 1; k < len(p.Piece); k++ {
				if _, ok := sp.prefixes[p.Piece[:k]]; !ok {
					sp.prefixes[p.Piece[:k]] = -1
				}
			}
			sp.prefixes[p.Piece] = int32(i)
			if p.Type == PieceNormal {
				sp.minScore = min(sp.minScore, p.Score)
				sp.maxScore = max(sp.maxScore, p.Score)
			}
		case PieceByte:
			var b int
			if _, err := fmt.Sscanf(p.Piece, "<0x%02X>", &b); err == nil && b >= 0 && b < 256 {
				sp.byteIDs[b] = int32(i)
			}
		case PieceUnknown, PieceControl:
		default:
			return nil, fmt.Errorf("sentencepiece: piece %d (%q) has unknown type %d", i, p.Piece, p.Type)
		}
	}
	if sp.byteFallback {
		for b, id := range sp.byteIDs {
			if id < 0 {
				return nil, fmt.Errorf("sentencepiece: byte fallback on but piece <0x%02X> missing", b)
			}
		}
	}
	return sp, nil
}

// VocabSize is the number of pieces.
func (sp *SentencePiece) VocabSize() int { return len(sp.pieces) }

// Piece returns the string of id ("" when out of range).
func (sp *SentencePiece) Piece(id int) string {
	if id < 0 || id >= len(sp.pieces) {
		return ""
	}
	return sp.pieces[id].Piece
}

// Normalize returns the normalised text the segmentation runs on
// (U+2581 for spaces, dummy prefix included).
func (sp *SentencePiece) Normalize(text string) string { return sp.norm.normalize(text) }

// Encode returns the piece ids of text followed by EOS (the golden corpus
// form; an empty text gives just EOS). No padding, no truncation.
func (sp *SentencePiece) Encode(text string) []int {
	ids := sp.EncodePieces(text)
	if sp.EOSID >= 0 {
		ids = append(ids, sp.EOSID)
	}
	return ids
}

// EncodePieces returns the piece ids of text without EOS.
func (sp *SentencePiece) EncodePieces(text string) []int {
	normalized := sp.norm.normalize(text)
	if normalized == "" {
		return nil
	}
	var out []int
	prevUnk := false
	for _, seg := range sp.viterbi(normalized) {
		isUnk := seg.id == int32(sp.UnkID)
		switch {
		case isUnk && sp.byteFallback:
			for i := 0; i < len(seg.text); i++ {
				out = append(out, int(sp.byteIDs[seg.text[i]]))
			}
		case isUnk && prevUnk:
			// Runs of unknown pieces become one <unk>.
		default:
			out = append(out, int(seg.id))
		}
		prevUnk = isUnk
	}
	return out
}

// segment is one piece of the best path.
type segment struct {
	id   int32
	text string
}

// bestNode is the best path ending at a byte position.
type bestNode struct {
	id    int32
	score float32
	start int32 // -1: not reached yet
}

// viterbi is unigram_model.cc's EncodeOptimized. Candidates are tried by
// start position, then by length (the trie's order); a candidate replaces the
// stored one only when strictly better, so ties keep the first. Scores are
// float32 as in the C++; a piece candidate is compared in double precision
// (the C++ expression is promoted to double there), the unknown one in float.
func (sp *SentencePiece) viterbi(s string) []segment {
	size := len(s)
	best := make([]bestNode, size+1)
	for i := range best {
		best[i].start = -1
	}
	unkScore := sp.minScore - unkPenalty
	for start := 0; start < size; {
		till := best[start].score
		mblen := min(oneCharLen(s[start]), size-start)
		single := false
		for end := start + 1; end <= size; end++ {
			id, ok := sp.prefixes[s[start:end]]
			if !ok {
				break
			}
			if id < 0 || sp.pieces[id].Type == PieceUnused {
				continue
			}
			length := end - start
			var score float64
			if sp.pieces[id].Type == PieceUserDefined {
				score = float64(float32(length)*sp.maxScore) - 0.1
			} else {
				score = float64(sp.pieces[id].Score)
			}
			cand := score + float64(till)
			if t := &best[end]; t.start == -1 || cand > float64(t.score) {
				*t = bestNode{id: id, score: float32(cand), start: int32(start)}
			}
			if length == mblen {
				single = true
			}
		}
		if !single {
			cand := unkScore + till
			if t := &best[start+mblen]; t.start == -1 || cand > t.score {
				*t = bestNode{id: int32(sp.UnkID), score: cand, start: int32(start)}
			}
		}
		start += mblen
	}
	var rev []segment
	for end := size; end > 0; {
		n := best[end]
		if n.start < 0 { // unreachable for well-formed input; never loop forever
			break
		}
		rev = append(rev, segment{id: n.id, text: s[n.start:end]})
		end = int(n.start)
	}
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	return rev
}

// oneCharLen is sentencepiece's OneCharLen: the UTF-8 length implied by a
// leading byte (continuation bytes count as 1).
func oneCharLen(b byte) int {
	return int("\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x02\x02\x03\x04"[b>>4])
}

// Decode joins the pieces of ids, turning U+2581 back into spaces and
// dropping control pieces and the leading space.
func (sp *SentencePiece) Decode(ids []int) string {
	var sb strings.Builder
	for _, id := range ids {
		if id < 0 || id >= len(sp.pieces) {
			continue
		}
		p := sp.pieces[id]
		switch p.Type {
		case PieceControl:
			continue
		case PieceUnknown:
			sb.WriteString(" \u2047 ")
			continue
		}
		sb.WriteString(p.Piece)
	}
	out := strings.ReplaceAll(sb.String(), spaceSymbol, " ")
	out = strings.TrimPrefix(out, " ")
	if !utf8.ValidString(out) {
		out = strings.ToValidUTF8(out, "\uFFFD")
	}
	return out
}
