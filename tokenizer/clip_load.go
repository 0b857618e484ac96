// clip_load.go reads CLIP BPE vocabularies from disk: Hugging Face's
// vocab.json + merges.txt pair, and OpenAI's bpe_simple_vocab_16e6.txt.gz
// (a merge list from which the vocabulary is built as simple_tokenizer.py
// does). FindCLIPTokenizer locates the pair for real use.
//
// It deliberately does not download anything: files must already be on disk.
package tokenizer

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// LoadCLIP reads a vocab.json (token -> id) and merges.txt ("#version" header
// line, then one "a b" merge per line).
func LoadCLIP(vocabPath, mergesPath string) (*CLIP, error) {
	vb, err := os.ReadFile(vocabPath)
	if err != nil {
		return nil, fmt.Errorf("clip tokenizer: %w", err)
	}
	var vocab map[string]int
	if err := json.Unmarshal(vb, &vocab); err != nil {
		return nil, fmt.Errorf("clip tokenizer: %s: %w", vocabPath, err)
	}
	mf, err := os.Open(mergesPath)
	if err != nil {
		return nil, fmt.Errorf("clip tokenizer: %w", err)
	}
	defer mf.Close()
	merges, err := ReadMerges(mf, -1)
	if err != nil {
		return nil, fmt.Errorf("clip tokenizer: %s: %w", mergesPath, err)
	}
	c, err := NewCLIP(vocab, merges)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, vocabPath)
	}
	return c, nil
}

// ReadMerges parses a merges list: a first line holding "#version" is
// skipped (OpenAI's reads `"bpe_simple_vocab_16e6.txt#version: 0.2`), blank lines ignored, every other line must be two symbols
// separated by one space. limit >= 0 keeps only the first limit merges.
func ReadMerges(r io.Reader, limit int) ([][2]string, error) {
	var merges [][2]string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimRight(sc.Text(), "\r")
		if (line == 1 && strings.Contains(s, "#version")) || s == "" {
			continue
		}
		if limit >= 0 && len(merges) >= limit {
			break
		}
		a, b, ok := strings.Cut(s, " ")
		if !ok || a == "" || b == "" || strings.Contains(b, " ") {
			return nil, fmt.Errorf("merges line %d: want two symbols separated by a space, got %q", line, s)
		}
		merges = append(merges, [2]string{a, b})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("merges line %d: %w", line, err)
	}
	return merges, nil
}

// openAIMergeCount is how many merges simple_tokenizer.py keeps from
// bpe_simple_vocab_16e6.txt.gz: 49152 - 256 - 2.
const openAIMergeCount = 49152 - 256 - 2

// LoadCLIPOpenAI reads OpenAI's bpe_simple_vocab_16e6.txt.gz.
func LoadCLIPOpenAI(path string) (*CLIP, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("clip tokenizer: %w", err)
	}
	defer f.Close()
	c, err := ReadCLIPOpenAI(f)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	return c, nil
}

// ReadCLIPOpenAI builds the tokenizer from a gzip-compressed merge list the
// way simple_tokenizer.py does: vocabulary = the 256 byte symbols, the same
// with "</w>", each kept merge joined, then <|startoftext|>, <|endoftext|>.
func ReadCLIPOpenAI(r io.Reader) (*CLIP, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("clip tokenizer: bpe vocab: %w", err)
	}
	defer zr.Close()
	merges, err := ReadMerges(zr, openAIMergeCount)
	if err != nil {
		return nil, fmt.Errorf("clip tokenizer: bpe vocab: %w", err)
	}
	vocab, merges := VocabFromMerges(merges)
	return NewCLIP(vocab, merges)
}

// VocabFromMerges builds simple_tokenizer.py's vocabulary for a merge list
// (byte symbols, byte symbols + "</w>", joined merges, the two specials).
// Repeated tokens keep their first id, so a degenerate list still loads.
func VocabFromMerges(merges [][2]string) (map[string]int, [][2]string) {
	vocab := map[string]int{}
	next := 0
	add := func(s string) {
		if _, ok := vocab[s]; !ok {
			vocab[s] = next
		}
		next++
	}
	order := byteOrder()
	for _, r := range order {
		add(string(r))
	}
	for _, r := range order {
		add(string(r) + clipEOW)
	}
	for _, m := range merges {
		add(m[0] + m[1])
	}
	add(clipStartText)
	add(clipEndText)
	return vocab, merges
}

// CLIPHubRepo is the Hugging Face repository whose cached tokenizer files
// FindCLIPTokenizer falls back to.
const CLIPHubRepo = "models--openai--clip-vit-large-patch14"

// ErrCLIPTokenizerNotFound is wrapped by FindCLIPTokenizer's error.
var ErrCLIPTokenizerNotFound = errors.New("clip tokenizer files not found")

// FindCLIPTokenizer locates vocab.json and merges.txt, in order: explicitDir
// (--clip-tokenizer DIR; an error if it lacks them), a diffusers model
// folder's tokenizer/ (modelPath itself, or the folder holding a file
// modelPath), then the Hugging Face cache ($HF_HUB_CACHE, $HF_HOME/hub or
// ~/.cache/huggingface/hub, snapshots of openai/clip-vit-large-patch14).
func FindCLIPTokenizer(explicitDir, modelPath string) (vocabPath, mergesPath string, err error) {
	if explicitDir != "" {
		if v, m, ok := clipPair(explicitDir); ok {
			return v, m, nil
		}
		if v, m, ok := clipPair(filepath.Join(explicitDir, "tokenizer")); ok {
			return v, m, nil
		}
		return "", "", fmt.Errorf("%w: --clip-tokenizer %s has no vocab.json and merges.txt", ErrCLIPTokenizerNotFound, explicitDir)
	}
	var tried []string
	if modelPath != "" {
		dir := modelPath
		if st, err := os.Stat(modelPath); err == nil && !st.IsDir() {
			dir = filepath.Dir(modelPath)
		}
		for _, d := range []string{filepath.Join(dir, "tokenizer"), dir} {
			tried = append(tried, d)
			if v, m, ok := clipPair(d); ok {
				return v, m, nil
			}
		}
	}
	for _, hub := range hubDirs() {
		pattern := filepath.Join(hub, CLIPHubRepo, "snapshots", "*")
		snaps, _ := filepath.Glob(pattern)
		sort.Sort(sort.Reverse(sort.StringSlice(snaps)))
		tried = append(tried, pattern)
		for _, s := range snaps {
			if v, m, ok := clipPair(s); ok {
				return v, m, nil
			}
			if v, m, ok := clipPair(filepath.Join(s, "tokenizer")); ok {
				return v, m, nil
			}
		}
	}
	return "", "", fmt.Errorf("%w (looked in %s): put vocab.json and merges.txt of openai/clip-vit-large-patch14 in a folder and pass --clip-tokenizer DIR, or place them in the diffusers model folder's tokenizer/",
		ErrCLIPTokenizerNotFound, strings.Join(tried, ", "))
}

// hubDirs lists the Hugging Face hub cache folders to search.
func hubDirs() []string {
	var dirs []string
	if d := os.Getenv("HF_HUB_CACHE"); d != "" {
		dirs = append(dirs, d)
	}
	if d := os.Getenv("HF_HOME"); d != "" {
		dirs = append(dirs, filepath.Join(d, "hub"))
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, ".cache", "huggingface", "hub"))
	}
	return dirs
}

// clipPair reports whether dir holds both files.
func clipPair(dir string) (string, string, bool) {
	v, m := filepath.Join(dir, "vocab.json"), filepath.Join(dir, "merges.txt")
	if isFile(v) && isFile(m) {
		return v, m, true
	}
	return "", "", false
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
