package golden

// checkCLIPTokenize compares the CLIP tokenizer with the corpus.
// Unsupported until the tokenizer lands.
func checkCLIPTokenize(root, path string) (bad, total int, err error) { return 0, 0, ErrUnsupported }
