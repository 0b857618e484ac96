package golden

// runLoRAMerge runs a "lora_merge" case. Unsupported until its issue lands.
func runLoRAMerge(c *Case) (Result, error) { return nil, ErrUnsupported }
