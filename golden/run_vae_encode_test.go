package golden

// runVAEEncode runs a "vae_encode" case. Unsupported until its issue lands.
func runVAEEncode(c *Case) (Result, error) { return nil, ErrUnsupported }
