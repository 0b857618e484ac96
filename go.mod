module github.com/sdbridge/sdbridge

go 1.26.8

require (
	github.com/google/go-cmp v0.7.0 // indirect
	github.com/nlpodyssey/safetensors v0.0.0-20250209183917-bfb01cc25f7c // indirect
	golang.org/x/sys v0.50.0 // indirect
)
