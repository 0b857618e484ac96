package main

// runDemo implements 'sdbridge demo'.
func runDemo(args []string) error { return errNotYet }
