package main

// runMerge implements 'sdbridge merge'.
func runMerge(args []string) error { return errNotYet }
