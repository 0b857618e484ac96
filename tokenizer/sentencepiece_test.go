// sentencepiece_test.go checks the SentencePiece encoder on tiny models the
// test serializes itself (Viterbi choice and tie order, unknown runs, byte
// fallback, a hand-built darts-clone charsmap, whitespace rules, loader
// errors) and, when the shared golden data is present, normalisation facts of
// the real T5 model. The full corpus check is in corpus_test.go, not here.
package tokenizer

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// protobuf writing helpers for test models.
func pbKey(num, typ int) []byte { return binary.AppendUvarint(nil, uint64(num<<3|typ)) }

func pbBytes(num int, b []byte) []byte {
	out := append(pbKey(num, 2), binary.AppendUvarint(nil, uint64(len(b)))...)
	return append(out, b...)
}

func pbVarint(num int, v int64) []byte {
	return append(pbKey(num, 0), binary.AppendUvarint(nil, uint64(v))...)
}

func pbFloat(num int, f float32) []byte {
	return binary.LittleEndian.AppendUint32(pbKey(num, 5), math.Float32bits(f))
}

// testModel describes a tiny model to serialize.
type testModel struct {
	pieces         []SPPiece
	charsmap       []byte
	byteFallback   bool
	noDummyPrefix  bool
	keepWhitespace bool // remove_extra_whitespaces = false
	modelType      int64
	unkID          int64
}

func (m testModel) bytes() []byte {
	var out []byte
	for _, p := range m.pieces {
		var b []byte
		b = append(b, pbBytes(1, []byte(p.Piece))...)
		b = append(b, pbFloat(2, p.Score)...)
		if p.Type != PieceNormal {
			b = append(b, pbVarint(3, int64(p.Type))...)
		}
		out = append(out, pbBytes(1, b)...)
	}
	mt := m.modelType
	if mt == 0 {
		mt = 1
	}
	unk := m.unkID
	if unk == 0 {
		unk = 2
	}
	var ts []byte
	ts = append(ts, pbVarint(3, mt)...)
	ts = append(ts, pbVarint(4, int64(len(m.pieces)))...)
	ts = append(ts, pbVarint(40, unk)...)
	ts = append(ts, pbVarint(41, -1)...)
	ts = append(ts, pbVarint(42, 1)...)
	ts = append(ts, pbVarint(43, 0)...)
	if m.byteFallback {
		ts = append(ts, pbVarint(35, 1)...)
	}
	out = append(out, pbBytes(2, ts)...)
	var ns []byte
	ns = append(ns, pbBytes(1, []byte("test"))...)
	if m.charsmap != nil {
		ns = append(ns, pbBytes(2, m.charsmap)...)
	}
	if m.noDummyPrefix {
		ns = append(ns, pbVarint(3, 0)...)
	}
	if m.keepWhitespace {
		ns = append(ns, pbVarint(4, 0)...)
	}
	return append(out, pbBytes(3, ns)...)
}

// testCharsmap is a hand-built darts-clone trie with two rules:
// "A" -> "a" and "\t" -> " ".
func testCharsmap() []byte {
	units := make([]uint32, 66)
	units[0] = 1 << 10              // root, offset 1
	units[64] = 0x41 | 1<<8 | 1<<10 // label 'A' at 1^0x41, has leaf, offset 1
	units[65] = 0x80000000 | 0      // leaf: value 0 -> "a"
	units[8] = 0x09 | 1<<8 | 1<<10  // label '\t' at 1^0x09, has leaf, offset 1
	units[9] = 0x80000000 | 2       // leaf: value 2 -> " "
	b := binary.LittleEndian.AppendUint32(nil, uint32(4*len(units)))
	for _, u := range units {
		b = binary.LittleEndian.AppendUint32(b, u)
	}
	return append(b, "a\x00 \x00"...)
}

func basePieces() []SPPiece {
	return []SPPiece{
		{"<pad>", 0, PieceControl}, {"</s>", 0, PieceControl}, {"<unk>", 0, PieceUnknown},
	}
}

func mustSP(t testing.TB, m testModel) *SentencePiece {
	t.Helper()
	spec, err := ParseSPModel(m.bytes())
	if err != nil {
		t.Fatal(err)
	}
	sp, err := NewSentencePiece(spec)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

func TestSentencePieceTiny(t *testing.T) {
	pieces := append(basePieces(),
		SPPiece{"▁", -1, PieceNormal},    // 3
		SPPiece{"ab", -2, PieceNormal},   // 4
		SPPiece{"▁a", -2, PieceNormal},   // 5
		SPPiece{"b", -1, PieceNormal},    // 6
		SPPiece{"▁ab", -10, PieceNormal}, // 7
		SPPiece{"a", -3, PieceNormal},    // 8
		SPPiece{"c", -3, PieceNormal},    // 9
		SPPiece{"cc", -1, PieceUnused},   // 10: never matched
	)
	sp := mustSP(t, testModel{pieces: pieces, charsmap: testCharsmap()})
	tests := []struct {
		in       string
		wantNorm string
		want     []int
	}{
		// ▁+ab and ▁a+b tie at -3: the candidate starting earlier (▁ then ab,
		// whose last piece starts at byte 3) is tried first and kept.
		{"ab", "▁ab", []int{3, 4, 1}},
		{"Ab", "▁ab", []int{3, 4, 1}}, // charsmap: A -> a
		{"  ab\t\tb  ", "▁ab▁b", []int{3, 4, 3, 6, 1}},
		{"a xyz b", "▁a▁xyz▁b", []int{5, 3, 2, 3, 6, 1}}, // x y z: one <unk>
		{"cc", "▁cc", []int{3, 9, 9, 1}},                 // unused piece skipped
		{"", "", []int{1}},
		{"   ", "", []int{1}},
		{"a\xffb", "▁a\uFFFDb", []int{5, 2, 6, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := sp.Normalize(tt.in); got != tt.wantNorm {
				t.Errorf("Normalize(%q) = %q, want %q", tt.in, got, tt.wantNorm)
			}
			if diff := cmp.Diff(tt.want, sp.Encode(tt.in)); diff != "" {
				t.Errorf("Encode(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
	if got := sp.Decode([]int{3, 4, 3, 6, 1}); got != "ab b" {
		t.Errorf("Decode = %q", got)
	}
}

func TestSentencePieceFlags(t *testing.T) {
	pieces := append(basePieces(), SPPiece{"▁", -1, PieceNormal}, SPPiece{"a", -1, PieceNormal})
	tests := []struct {
		name     string
		m        testModel
		in, want string
	}{
		{"no dummy prefix", testModel{noDummyPrefix: true}, " a  a ", "a▁a"},
		{"keep whitespace", testModel{keepWhitespace: true}, " a  a ", "▁▁a▁▁a▁"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.m.pieces = pieces
			if got := mustSP(t, tt.m).Normalize(tt.in); got != tt.want {
				t.Errorf("Normalize(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestSentencePieceByteFallback(t *testing.T) {
	pieces := append(basePieces(), SPPiece{"▁", -1, PieceNormal}, SPPiece{"a", -1, PieceNormal})
	for b := range 256 {
		pieces = append(pieces, SPPiece{fmt.Sprintf("<0x%02X>", b), 0, PieceByte})
	}
	sp := mustSP(t, testModel{pieces: pieces, byteFallback: true})
	// "é" = C3 A9, "x" = 78: each byte becomes its piece (id 5 + byte).
	want := []int{3, 4, 5 + 0x78, 5 + 0xC3, 5 + 0xA9, 1}
	if got := sp.Encode("axé"); !slices.Equal(got, want) {
		t.Errorf("Encode = %v, want %v", got, want)
	}
}

func TestSentencePieceUserDefined(t *testing.T) {
	pieces := append(basePieces(),
		SPPiece{"▁", -1, PieceNormal}, SPPiece{"x", -1, PieceNormal}, SPPiece{"y", -1, PieceNormal},
		SPPiece{"xy", -100, PieceUserDefined})
	sp := mustSP(t, testModel{pieces: pieces})
	// A user-defined piece scores len*max_score - 0.1, max_score starting
	// from FLT_MIN as in the C++: with all scores negative that is about
	// -0.1, so "xy" beats x+y = -2 despite its stored -100.
	if got := sp.Encode("xy"); !slices.Equal(got, []int{3, 6, 1}) {
		t.Errorf("Encode = %v", got)
	}
}

func TestSentencePieceLoadErrors(t *testing.T) {
	good := testModel{pieces: append(basePieces(), SPPiece{"▁", -1, PieceNormal})}
	full := good.bytes()
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"truncated", full[:len(full)-3]},
		{"bad wire type", append(pbKey(1, 5), 1, 2, 3, 4)},
		{"group wire type", pbKey(1, 3)},
		{"BPE model", testModel{pieces: good.pieces, modelType: 2}.bytes()},
		{"unk id not unknown", testModel{pieces: good.pieces, unkID: 3}.bytes()},
		{"duplicate piece", testModel{pieces: append(good.pieces, SPPiece{"▁", -2, PieceNormal})}.bytes()},
		{"bad charsmap", testModel{pieces: good.pieces, charsmap: []byte{200, 0, 0, 0, 1}}.bytes()},
		{"byte fallback without bytes", testModel{pieces: good.pieces, byteFallback: true}.bytes()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := ParseSPModel(tt.b)
			if err == nil {
				_, err = NewSentencePiece(spec)
			}
			if err == nil {
				t.Error("want an error")
			}
		})
	}
}

// tinyTokenizerJSON is a tokenizer.json with the given pieces (added tokens
// for the specials) in T5's layout.
func tinyTokenizerJSON(pieces []SPPiece, charsmap []byte) []byte {
	vocab := make([][2]any, len(pieces))
	for i, p := range pieces {
		vocab[i] = [2]any{p.Piece, p.Score}
	}
	doc := map[string]any{
		"added_tokens": []map[string]any{
			{"id": 0, "content": "<pad>", "special": true},
			{"id": 1, "content": "</s>", "special": true},
			{"id": 2, "content": "<unk>", "special": true},
		},
		"normalizer": map[string]any{"type": "Sequence", "normalizers": []map[string]any{
			{"type": "Precompiled", "precompiled_charsmap": base64.StdEncoding.EncodeToString(charsmap)},
			{"type": "Strip", "strip_left": false, "strip_right": true},
			{"type": "Replace", "pattern": map[string]any{"Regex": " {2,}"}, "content": "▁"},
		}},
		"pre_tokenizer": map[string]any{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
		"post_processor": map[string]any{
			"type":           "TemplateProcessing",
			"single":         []map[string]any{{"Sequence": map[string]any{"id": "A"}}, {"SpecialToken": map[string]any{"id": "</s>"}}},
			"special_tokens": map[string]any{"</s>": map[string]any{"id": "</s>", "ids": []int{1}}},
		},
		"model": map[string]any{"type": "Unigram", "unk_id": 2, "vocab": vocab, "byte_fallback": false},
	}
	b, _ := json.Marshal(doc)
	return b
}

func TestSentencePieceJSONMatchesModel(t *testing.T) {
	pieces := append(basePieces(),
		SPPiece{"▁", -1, PieceNormal}, SPPiece{"ab", -2, PieceNormal}, SPPiece{"▁a", -2, PieceNormal},
		SPPiece{"b", -1, PieceNormal}, SPPiece{"a", -3, PieceNormal})
	fromModel := mustSP(t, testModel{pieces: pieces, charsmap: testCharsmap()})
	spec, err := ParseHFUnigram(tinyTokenizerJSON(pieces, testCharsmap()))
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := NewSentencePiece(spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{"ab", " Ab\tb  ", "a q b", "", "   "} {
		if a, b := fromModel.Encode(in), fromJSON.Encode(in); !slices.Equal(a, b) {
			t.Errorf("%q: model %v, json %v", in, a, b)
		}
	}
	if fromJSON.EOSID != 1 || fromJSON.PadID != 0 || fromJSON.UnkID != 2 {
		t.Errorf("eos %d pad %d unk %d", fromJSON.EOSID, fromJSON.PadID, fromJSON.UnkID)
	}
}

func TestParseHFUnigramErrors(t *testing.T) {
	tests := []struct{ name, doc string }{
		{"not json", "{"},
		{"BPE", `{"model":{"type":"BPE"}}`},
		{"no unk", `{"model":{"type":"Unigram","vocab":[]}}`},
		{"bad vocab", `{"model":{"type":"Unigram","unk_id":0,"vocab":[[1,2]]},"pre_tokenizer":{"type":"Metaspace"}}`},
		{"no metaspace", `{"model":{"type":"Unigram","unk_id":0,"vocab":[["<unk>",0]]}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseHFUnigram([]byte(tt.doc)); err == nil {
				t.Error("want an error")
			}
		})
	}
}

// TestT5Facts checks spec section 5 facts on the real model.
func TestT5Facts(t *testing.T) {
	dir := filepath.Join(goldenDir(t), "data", "t5")
	sp, err := LoadSentencePiece(filepath.Join(dir, "spiece.model"))
	if err != nil {
		t.Fatal(err)
	}
	if sp.VocabSize() != 32000 || sp.UnkID != T5UnkID || sp.EOSID != T5EOSID || sp.PadID != T5PadID {
		t.Fatalf("size %d unk %d eos %d pad %d", sp.VocabSize(), sp.UnkID, sp.EOSID, sp.PadID)
	}
	norm := []struct{ in, want string }{
		{"  Hello   World  ", "▁Hello▁World"},
		{"ＡＢＣ１", "▁ABC1"},
		{"a\tb\nc", "▁a▁b▁c"},
		{"\u200b", ""},
		{"", ""},
	}
	for _, tt := range norm {
		if got := sp.Normalize(tt.in); got != tt.want {
			t.Errorf("Normalize(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got := sp.Encode("{{x}}"); !slices.Contains(got, T5UnkID) || got[len(got)-1] != T5EOSID {
		t.Errorf("Encode({{x}}) = %v, want an <unk> and EOS", got)
	}
	if got := sp.Encode(""); !slices.Equal(got, []int{T5EOSID}) {
		t.Errorf("Encode(\"\") = %v", got)
	}
}

func TestSentencePieceEncodeFixed(t *testing.T) {
	pieces := append(basePieces(), SPPiece{"▁", -1, PieceNormal}, SPPiece{"a", -1, PieceNormal})
	sp := mustSP(t, testModel{pieces: pieces})
	tests := []struct {
		in       string
		n        int
		ids, msk []int
		wantErr  bool
	}{
		{"a", 5, []int{3, 4, 1, 0, 0}, []int{1, 1, 1, 0, 0}, false},
		{"a a a", 4, []int{3, 4, 3, 1}, []int{1, 1, 1, 1}, false},
		{"", 2, []int{1, 0}, []int{1, 0}, false},
		{"a", 0, nil, nil, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q/%d", tt.in, tt.n), func(t *testing.T) {
			ids, msk, err := sp.EncodeFixed(tt.in, tt.n)
			if (err != nil) != tt.wantErr || !slices.Equal(ids, tt.ids) || !slices.Equal(msk, tt.msk) {
				t.Errorf("got %v %v %v, want %v %v", ids, msk, err, tt.ids, tt.msk)
			}
		})
	}
}

func TestLoadT5Tokenizer(t *testing.T) {
	pieces := append(basePieces(), SPPiece{"▁", -1, PieceNormal}, SPPiece{"a", -1, PieceNormal})
	root := t.TempDir()
	write := func(path string, b []byte) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "model", "spiece.model"), testModel{pieces: pieces}.bytes())
	write(filepath.Join(root, "sd3", "tokenizer_3", "tokenizer.json"), tinyTokenizerJSON(pieces, testCharsmap()))
	write(filepath.Join(root, "broken", "spiece.model"), []byte{0xff})
	tests := []struct {
		dir     string
		wantErr error
	}{
		{"model", nil},
		{"sd3", nil},
		{"empty", ErrT5TokenizerNotFound},
		{"broken", errTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			sp, err := LoadT5Tokenizer(filepath.Join(root, tt.dir))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]int{3, 4, 1}, sp.Encode("a")); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
