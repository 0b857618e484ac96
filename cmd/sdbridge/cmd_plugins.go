package main

// runPlugins implements 'sdbridge plugins'.
func runPlugins(args []string) error { return errNotYet }
