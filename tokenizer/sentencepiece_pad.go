// sentencepiece_pad.go is the fixed-length form of T5 input used by ELLA's
// "fixed" mode (spec section 5.4): at most n-1 pieces, then EOS, right-padded
// with the pad id, with an attention mask of 1 on real tokens (EOS included).
//
// It deliberately does not pad in the default flexible mode: Encode's ids
// (pieces + EOS, any length) are the model input there, mask all ones.
package tokenizer

import "fmt"

// EncodeFixed returns ids of exactly n tokens and their mask.
func (sp *SentencePiece) EncodeFixed(text string, n int) (ids, mask []int, err error) {
	if n < 1 {
		return nil, nil, fmt.Errorf("sentencepiece: fixed length %d, want at least 1", n)
	}
	if sp.EOSID < 0 || sp.PadID < 0 {
		return nil, nil, fmt.Errorf("sentencepiece: fixed length needs EOS and pad pieces (eos %d, pad %d)", sp.EOSID, sp.PadID)
	}
	pieces := sp.EncodePieces(text)
	if len(pieces) > n-1 {
		pieces = pieces[:n-1]
	}
	ids = make([]int, n)
	mask = make([]int, n)
	copy(ids, pieces)
	ids[len(pieces)] = sp.EOSID
	for i := range len(pieces) + 1 {
		mask[i] = 1
	}
	for i := len(pieces) + 1; i < n; i++ {
		ids[i] = sp.PadID
	}
	return ids, mask, nil
}
