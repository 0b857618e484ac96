package golden

// runT5Encoder runs a "t5_encoder" case. Unsupported until its issue lands.
func runT5Encoder(c *Case) (Result, error) { return nil, ErrUnsupported }
