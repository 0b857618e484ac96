package main

// runGenerate implements 'sdbridge generate'.
func runGenerate(args []string) error { return errNotYet }
