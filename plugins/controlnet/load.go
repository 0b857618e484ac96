// load.go: opening a ControlNet from disk in the forms people download: a
// single .safetensors file (ldm with the control_model. prefix, bare ldm
// names from A1111's extract_controlnet.py, fp16/bf16/fp32, or diffusers
// ControlNetModel names), a diffusers model directory
// (diffusion_pytorch_model[.fp16].safetensors, possibly sharded behind an
// index), or a *.safetensors.index.json. Form detection and name mapping
// are models.ControlNetWeights'; this file only finds the tensors.
//
// It deliberately does not read pickle (.pth/.ckpt) files: they execute code
// when unpickled; the error says how to convert them.
package controlnet

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/safetensors"
)

// source is a models.Source that can be closed.
type source interface {
	models.Source
	io.Closer
}

// openSource opens path as a tensor source.
func openSource(path string) (source, error) {
	lower := strings.ToLower(path)
	for _, ext := range []string{".pth", ".ckpt", ".bin", ".pt"} {
		if strings.HasSuffix(lower, ext) {
			return nil, fmt.Errorf("controlnet %s: pickle checkpoints are not read (they run code when loaded); convert it to .safetensors first", path)
		}
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("controlnet %s: %w", path, err)
	}
	if st.IsDir() {
		for _, name := range []string{
			"diffusion_pytorch_model.safetensors",
			"diffusion_pytorch_model.fp16.safetensors",
			"diffusion_pytorch_model.safetensors.index.json",
			"diffusion_pytorch_model.fp16.safetensors.index.json",
		} {
			p := filepath.Join(path, name)
			if _, err := os.Stat(p); err == nil {
				return openSource(p)
			}
		}
		return nil, fmt.Errorf("controlnet %s: a directory without diffusion_pytorch_model[.fp16].safetensors (a diffusers ControlNetModel folder is expected)", path)
	}
	switch {
	case strings.HasSuffix(lower, ".index.json"):
		s, err := safetensors.OpenIndex(path)
		if err != nil {
			return nil, fmt.Errorf("controlnet %s: %w", path, err)
		}
		return s, nil
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("controlnet %s: %w", path, err)
	}
	return f, nil
}

// loadNet opens path and binds its ControlNet with heads attention heads
// (the host U-Net's count: it cannot be read from the weights). The weights
// are widened into their own memory, so the file is closed before return.
func loadNet(path string, heads int) (*models.ControlNet, models.ControlNetLayout, error) {
	src, err := openSource(path)
	if err != nil {
		return nil, "", err
	}
	defer src.Close()
	w, layout, err := models.ControlNetWeights(src)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	cfg, err := models.InferControlNetConfig(w)
	if err != nil {
		return nil, layout, fmt.Errorf("%s: %w", path, err)
	}
	if heads > 0 {
		cfg.NumHeads = heads
	}
	net, err := models.NewControlNet(w, cfg)
	if err != nil {
		return nil, layout, fmt.Errorf("%s: %w", path, err)
	}
	return net, layout, nil
}
