package golden

// runControlNet runs a "controlnet" case. Unsupported until its issue lands.
func runControlNet(c *Case) (Result, error) { return nil, ErrUnsupported }
