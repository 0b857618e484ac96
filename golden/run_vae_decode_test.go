package golden

// runVAEDecode runs a "vae_decode" case. Unsupported until its issue lands.
func runVAEDecode(c *Case) (Result, error) { return nil, ErrUnsupported }
