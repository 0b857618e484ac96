package golden

// checkCLIPTokenize and checkT5Tokenize compare the tokenizers with the
// corpora. Unsupported until the tokenizer issues land.
func checkCLIPTokenize(root, path string) (bad, total int, err error) { return 0, 0, ErrUnsupported }

func checkT5Tokenize(root, path string) (bad, total int, err error) { return 0, 0, ErrUnsupported }
