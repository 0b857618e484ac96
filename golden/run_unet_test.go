package golden

// runUNet runs a "unet" case. Unsupported until its issue lands.
func runUNet(c *Case) (Result, error) { return nil, ErrUnsupported }
