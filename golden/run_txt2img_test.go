package golden

// runTxt2Img runs a "txt2img" case. Unsupported until its issue lands.
func runTxt2Img(c *Case) (Result, error) { return nil, ErrUnsupported }
