// clip.go is the CLIP byte-level BPE tokenizer (the one every SD1.x text
// encoder was trained with): vocabulary and merge ranks, the BPE merge loop
// with a word cache, and Encode producing ids framed by <|startoftext|> and
// <|endoftext|>. Text cleanup and the pre-tokenizer live in clip_text.go,
// loading from files in clip_load.go, padding helpers in clip_pad.go.
//
// It deliberately does not implement ftfy's mojibake repair (the Hugging Face
// tokenizer without ftfy, which the golden corpus follows, does not either),
// nor decoding back to text beyond the per-token string lookup.
package tokenizer

import (
	"fmt"
	"strings"
	"sync"
)

// CLIP token ids of the SD1.x vocabulary (49,408 tokens).
const (
	CLIPStartID  = 49406 // <|startoftext|>
	CLIPEndID    = 49407 // <|endoftext|>, also the padding token of SD1.x
	CLIPMaxLen   = 77    // context length of the text encoder
	CLIPChunkLen = 75    // tokens between start and end in one 77-token window
)

const (
	clipStartText = "<|startoftext|>"
	clipEndText   = "<|endoftext|>"
	clipEOW       = "</w>"
)

// mergePair is a pair of adjacent symbols considered for merging.
type mergePair struct{ a, b string }

// CLIP is a loaded CLIP BPE tokenizer. It is safe for concurrent use.
type CLIP struct {
	vocab   map[string]int // token string -> id
	tokens  []string       // id -> token string ("" where unused)
	ranks   map[mergePair]int
	StartID int // id of <|startoftext|>
	EndID   int // id of <|endoftext|>; also used for unknown symbols, as HF does

	mu    sync.Mutex
	cache map[string][]int // pre-token (byte-encoded) -> ids
}

// clipCacheMax bounds the word cache; it is cleared when full.
const clipCacheMax = 1 << 16

// NewCLIP builds a tokenizer from an in-memory vocabulary (token -> id) and an
// ordered merge list (each "a b", highest priority first). Both special
// tokens must be present in vocab.
func NewCLIP(vocab map[string]int, merges [][2]string) (*CLIP, error) {
	if len(vocab) == 0 {
		return nil, fmt.Errorf("clip tokenizer: empty vocabulary")
	}
	c := &CLIP{
		vocab: make(map[string]int, len(vocab)),
		ranks: make(map[mergePair]int, len(merges)),
		cache: map[string][]int{},
	}
	maxID := -1
	for tok, id := range vocab {
		if id < 0 {
			return nil, fmt.Errorf("clip tokenizer: token %q has negative id %d", tok, id)
		}
		if id > 1<<24 {
			return nil, fmt.Errorf("clip tokenizer: token %q has implausible id %d", tok, id)
		}
		c.vocab[tok] = id
		maxID = max(maxID, id)
	}
	c.tokens = make([]string, maxID+1)
	for tok, id := range vocab {
		c.tokens[id] = tok
	}
	for i, m := range merges {
		p := mergePair{m[0], m[1]}
		if _, dup := c.ranks[p]; !dup {
			c.ranks[p] = i
		}
	}
	var ok bool
	if c.StartID, ok = vocab[clipStartText]; !ok {
		return nil, fmt.Errorf("clip tokenizer: vocabulary lacks %s", clipStartText)
	}
	if c.EndID, ok = vocab[clipEndText]; !ok {
		return nil, fmt.Errorf("clip tokenizer: vocabulary lacks %s", clipEndText)
	}
	return c, nil
}

// VocabSize is the number of ids (highest id + 1).
func (c *CLIP) VocabSize() int { return len(c.tokens) }

// TokenID returns the id of a vocabulary string such as ",</w>".
func (c *CLIP) TokenID(tok string) (int, bool) {
	id, ok := c.vocab[tok]
	return id, ok
}

// Token returns the vocabulary string of id ("" when out of range).
func (c *CLIP) Token(id int) string {
	if id < 0 || id >= len(c.tokens) {
		return ""
	}
	return c.tokens[id]
}

// Encode tokenizes text into ids framed by the start and end tokens, without
// padding or truncation (the golden corpus form).
func (c *CLIP) Encode(text string) []int {
	body := c.EncodeBody(text)
	out := make([]int, 0, len(body)+2)
	out = append(out, c.StartID)
	out = append(out, body...)
	return append(out, c.EndID)
}

// EncodeBody tokenizes text into ids without start and end tokens (what
// A1111 feeds its chunking; see prompt_chunks.go).
func (c *CLIP) EncodeBody(text string) []int {
	var out []int
	for _, word := range clipPreTokenize(clipCleanText(text)) {
		switch word {
		case clipStartText:
			out = append(out, c.StartID)
			continue
		case clipEndText:
			out = append(out, c.EndID)
			continue
		}
		out = append(out, c.bpeWord(word)...)
	}
	return out
}

// bpeWord returns the ids of one pre-token, using the cache.
func (c *CLIP) bpeWord(word string) []int {
	c.mu.Lock()
	ids, ok := c.cache[word]
	c.mu.Unlock()
	if ok {
		return ids
	}
	syms := c.bpe(byteEncode(word))
	ids = make([]int, len(syms))
	for i, s := range syms {
		id, ok := c.vocab[s]
		if !ok {
			id = c.EndID // unknown symbol: HF maps it to unk_token = <|endoftext|>
		}
		ids[i] = id
	}
	c.mu.Lock()
	if len(c.cache) >= clipCacheMax {
		clear(c.cache)
	}
	c.cache[word] = ids
	c.mu.Unlock()
	return ids
}

// bpe applies the merge ranks to one byte-encoded word, the way OpenAI's
// simple_tokenizer does: start from characters, the last one carrying "</w>";
// repeatedly merge every occurrence (left to right) of the lowest-ranked
// adjacent pair until no ranked pair remains.
func (c *CLIP) bpe(word string) []string {
	var syms []string
	for _, r := range word {
		syms = append(syms, string(r))
	}
	if len(syms) == 0 {
		return nil
	}
	syms[len(syms)-1] += clipEOW
	if len(syms) == 1 {
		return syms
	}
	for len(syms) > 1 {
		best, bestRank := mergePair{}, -1
		for i := 0; i+1 < len(syms); i++ {
			p := mergePair{syms[i], syms[i+1]}
			if r, ok := c.ranks[p]; ok && (bestRank < 0 || r < bestRank) {
				best, bestRank = p, r
			}
		}
		if bestRank < 0 {
			break
		}
		merged := syms[:0:0]
		for i := 0; i < len(syms); {
			if i+1 < len(syms) && syms[i] == best.a && syms[i+1] == best.b {
				merged = append(merged, best.a+best.b)
				i += 2
				continue
			}
			merged = append(merged, syms[i])
			i++
		}
		syms = merged
	}
	return syms
}

// Decode turns ids back into text: byte symbols decoded, "</w>" as a space,
// special tokens dropped. Unknown ids are skipped.
func (c *CLIP) Decode(ids []int) string {
	var sb strings.Builder
	for _, id := range ids {
		if id == c.StartID || id == c.EndID {
			continue
		}
		sb.WriteString(c.Token(id))
	}
	s := strings.ReplaceAll(sb.String(), clipEOW, " ")
	return strings.TrimRight(byteDecode(s), " ")
}
