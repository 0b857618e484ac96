// Package pluginv1 is the generated protobuf and gRPC code of the sdbridge
// plugin protocol v1 (plugin.proto). It is internal: plugin authors and the
// host use the hand-written types of package sdk, never these structs.
//
// Regenerate with `go generate ./plugins/sdk/...` (needs protoc,
// protoc-gen-go v1.36.12 and protoc-gen-go-grpc v1.5.1 on PATH).
package pluginv1

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative plugin.proto
