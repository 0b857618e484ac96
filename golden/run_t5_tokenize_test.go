package golden

// checkT5Tokenize compares the SentencePiece tokenizer with the corpus.
// Unsupported until the tokenizer lands.
func checkT5Tokenize(root, path string) (bad, total int, err error) { return 0, 0, ErrUnsupported }
