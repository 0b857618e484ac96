// sentencepiece_proto.go decodes a SentencePiece ModelProto (spiece.model)
// with a minimal protobuf wire reader: the pieces (string, score, type), the
// trainer-spec fields that change encoding (model type, special ids, byte
// fallback, whitespace-as-suffix) and the normalizer spec (precompiled
// charsmap and whitespace flags).
//
// It deliberately does not decode the rest of the schema (training options,
// self-test data, denormalizer); unknown fields are skipped. Every length is
// bounds-checked: arbitrary bytes give an error, never a panic.
package tokenizer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// PieceType is SentencePiece's ModelProto.SentencePiece.Type.
type PieceType int32

// Piece types as numbered in sentencepiece_model.proto.
const (
	PieceNormal      PieceType = 1
	PieceUnknown     PieceType = 2
	PieceControl     PieceType = 3
	PieceUserDefined PieceType = 4
	PieceUnused      PieceType = 5
	PieceByte        PieceType = 6
)

// SPPiece is one vocabulary entry; its id is its index.
type SPPiece struct {
	Piece string
	Score float32
	Type  PieceType
}

// SPModelSpec is what encoding needs from a ModelProto, with the proto's
// defaults filled in for absent fields.
type SPModelSpec struct {
	Pieces []SPPiece

	ModelType       int32 // 1 UNIGRAM, 2 BPE, 3 WORD, 4 CHAR
	UnkID           int32 // default 0
	BosID           int32 // default 1 (-1: none)
	EosID           int32 // default 2
	PadID           int32 // default -1
	ByteFallback    bool
	WhitespaceAsSfx bool // treat_whitespace_as_suffix

	NormalizerName         string
	PrecompiledCharsmap    []byte
	AddDummyPrefix         bool // default true
	RemoveExtraWhitespaces bool // default true
	EscapeWhitespaces      bool // default true
}

// errTruncated is returned for a field that runs past its message.
var errTruncated = errors.New("truncated protobuf field")

// wireField is one decoded field: number, wire type and payload.
type wireField struct {
	num  int
	typ  int
	varv uint64 // varint, fixed32 and fixed64 payloads
	data []byte // length-delimited payload
}

// readField decodes the field at the start of b and returns the rest.
func readField(b []byte) (wireField, []byte, error) {
	key, n := binary.Uvarint(b)
	if n <= 0 {
		return wireField{}, nil, fmt.Errorf("bad field key: %w", errTruncated)
	}
	b = b[n:]
	f := wireField{num: int(key >> 3), typ: int(key & 7)}
	if key>>3 == 0 || key>>3 > math.MaxInt32 {
		return f, nil, fmt.Errorf("invalid field number %d", key>>3)
	}
	switch f.typ {
	case 0: // varint
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return f, nil, fmt.Errorf("field %d varint: %w", f.num, errTruncated)
		}
		f.varv, b = v, b[n:]
	case 1: // fixed64
		if len(b) < 8 {
			return f, nil, fmt.Errorf("field %d fixed64: %w", f.num, errTruncated)
		}
		f.varv, b = binary.LittleEndian.Uint64(b), b[8:]
	case 2: // length-delimited
		l, n := binary.Uvarint(b)
		if n <= 0 || l > uint64(len(b)-n) {
			return f, nil, fmt.Errorf("field %d length: %w", f.num, errTruncated)
		}
		f.data, b = b[n:n+int(l)], b[n+int(l):]
	case 5: // fixed32
		if len(b) < 4 {
			return f, nil, fmt.Errorf("field %d fixed32: %w", f.num, errTruncated)
		}
		f.varv, b = uint64(binary.LittleEndian.Uint32(b)), b[4:]
	default:
		return f, nil, fmt.Errorf("field %d: unsupported wire type %d", f.num, f.typ)
	}
	return f, b, nil
}

// forEachField calls fn for every field of message b.
func forEachField(b []byte, fn func(f wireField) error) error {
	for len(b) > 0 {
		f, rest, err := readField(b)
		if err != nil {
			return err
		}
		if err := fn(f); err != nil {
			return err
		}
		b = rest
	}
	return nil
}

// want checks a field's wire type.
func (f wireField) want(typ int, what string) error {
	if f.typ != typ {
		return fmt.Errorf("%s (field %d): wire type %d, want %d", what, f.num, f.typ, typ)
	}
	return nil
}

// ParseSPModel decodes a serialized ModelProto.
func ParseSPModel(b []byte) (*SPModelSpec, error) {
	m := &SPModelSpec{
		ModelType: 1, UnkID: 0, BosID: 1, EosID: 2, PadID: -1,
		AddDummyPrefix: true, RemoveExtraWhitespaces: true, EscapeWhitespaces: true,
	}
	err := forEachField(b, func(f wireField) error {
		switch f.num {
		case 1:
			if err := f.want(2, "pieces"); err != nil {
				return err
			}
			p, err := parsePiece(f.data)
			if err != nil {
				return fmt.Errorf("piece %d: %w", len(m.Pieces), err)
			}
			m.Pieces = append(m.Pieces, p)
		case 2:
			if err := f.want(2, "trainer_spec"); err != nil {
				return err
			}
			return parseTrainerSpec(f.data, m)
		case 3:
			if err := f.want(2, "normalizer_spec"); err != nil {
				return err
			}
			return parseNormalizerSpec(f.data, m)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sentencepiece model: %w", err)
	}
	if len(m.Pieces) == 0 {
		return nil, fmt.Errorf("sentencepiece model: no pieces")
	}
	return m, nil
}

func parsePiece(b []byte) (SPPiece, error) {
	p := SPPiece{Type: PieceNormal}
	err := forEachField(b, func(f wireField) error {
		switch f.num {
		case 1:
			if err := f.want(2, "piece"); err != nil {
				return err
			}
			p.Piece = string(f.data)
		case 2:
			if err := f.want(5, "score"); err != nil {
				return err
			}
			p.Score = math.Float32frombits(uint32(f.varv))
		case 3:
			if err := f.want(0, "type"); err != nil {
				return err
			}
			p.Type = PieceType(int32(f.varv))
		}
		return nil
	})
	return p, err
}

func parseTrainerSpec(b []byte, m *SPModelSpec) error {
	return forEachField(b, func(f wireField) error {
		var dst *int32
		switch f.num {
		case 3:
			dst = &m.ModelType
		case 40:
			dst = &m.UnkID
		case 41:
			dst = &m.BosID
		case 42:
			dst = &m.EosID
		case 43:
			dst = &m.PadID
		case 35:
			if err := f.want(0, "byte_fallback"); err != nil {
				return err
			}
			m.ByteFallback = f.varv != 0
		case 24:
			if err := f.want(0, "treat_whitespace_as_suffix"); err != nil {
				return err
			}
			m.WhitespaceAsSfx = f.varv != 0
		}
		if dst != nil {
			if err := f.want(0, "trainer_spec int"); err != nil {
				return err
			}
			*dst = int32(f.varv) // int32 fields: negatives are sign-extended varints
		}
		return nil
	})
}

func parseNormalizerSpec(b []byte, m *SPModelSpec) error {
	return forEachField(b, func(f wireField) error {
		switch f.num {
		case 1:
			if err := f.want(2, "normalizer name"); err != nil {
				return err
			}
			m.NormalizerName = string(f.data)
		case 2:
			if err := f.want(2, "precompiled_charsmap"); err != nil {
				return err
			}
			m.PrecompiledCharsmap = f.data
		case 3, 4, 5:
			if err := f.want(0, "normalizer flag"); err != nil {
				return err
			}
			v := f.varv != 0
			switch f.num {
			case 3:
				m.AddDummyPrefix = v
			case 4:
				m.RemoveExtraWhitespaces = v
			case 5:
				m.EscapeWhitespaces = v
			}
		}
		return nil
	})
}
