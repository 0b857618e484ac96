package golden

// runUNetControlNet runs a "unet_controlnet" case. Unsupported until its issue lands.
func runUNetControlNet(c *Case) (Result, error) { return nil, ErrUnsupported }
