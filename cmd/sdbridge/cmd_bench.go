package main

// runBench implements 'sdbridge bench'.
func runBench(args []string) error { return errNotYet }
