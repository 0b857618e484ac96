// Package sdk is the contract between the sdbridge host and its plugins, and
// the only package a third-party plugin needs.
//
// A plugin is a separate process (hashicorp/go-plugin over gRPC). It
// implements Describer plus one or more role interfaces (WeightPatcher,
// Conditioner, ResidualProvider) and calls Serve from main:
//
//	func main() { sdk.Serve(&myPlugin{}) }
//
// Tensors never cross gRPC: the host allocates them in shared arenas (sealed
// memfds whose fds reach the plugin over a side socket) and messages carry
// TensorRef descriptors (arena, offset, dtype, shape) keyed by name. The SDK
// maps each arena once and hands the plugin *Tensor views; a plugin may write
// only tensors granted writable for the current call.
//
// The host side of the same protocol (Remote, HostPluginSets, Dispense) lives
// here too so that the generated code stays internal; package sdk never
// imports the host. Tests for plugins use package sdk/sdktest.
//
// This package deliberately does not start processes, supervise them or
// validate refs against the host's arenas (package host does).
package sdk
