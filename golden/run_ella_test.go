package golden

// runELLA runs a "ella" case. Unsupported until its issue lands.
func runELLA(c *Case) (Result, error) { return nil, ErrUnsupported }
