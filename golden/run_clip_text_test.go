package golden

// runCLIPText runs a "clip_text" case. Unsupported until its issue lands.
func runCLIPText(c *Case) (Result, error) { return nil, ErrUnsupported }
