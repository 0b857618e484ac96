package main

// runPlugin implements 'sdbridge plugin'.
func runPlugin(args []string) error { return errNotYet }
