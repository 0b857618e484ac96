package main

// runInspect implements 'sdbridge inspect'.
func runInspect(args []string) error { return errNotYet }
