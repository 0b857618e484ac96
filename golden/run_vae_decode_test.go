// run_vae_decode_test.go runs "vae_decode" cases: the checkpoint's VAE
// decodes a sampler-space latent; the image is compared unclamped.
package golden

import (
	"fmt"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// runVAEDecode runs a "vae_decode" case.
func runVAEDecode(c *Case) (Result, error) {
	vae, closeFn, err := loadGoldenVAE(c, false)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	data, shape, err := c.Input("in.latent")
	if err != nil {
		return nil, err
	}
	img, err := vae.Decode(nn.From(data, shape...)) // [B, 3, 8h, 8w]
	if err != nil {
		return nil, err
	}
	return Result{"out.image": {Shape: img.Shape, Data: img.Data}}, nil
}

// loadGoldenVAE opens the case's checkpoint and loads its VAE with the
// case's scale_factor (the decoder only unless withEncoder).
func loadGoldenVAE(c *Case, withEncoder bool) (*models.VAE, func(), error) {
	path, err := c.File("checkpoint")
	if err != nil {
		return nil, nil, err
	}
	var scale float32
	if err := c.ConfigInto("scale_factor", &scale); err != nil {
		return nil, nil, err
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, nil, err
	}
	load := models.LoadVAEDecoder
	if withEncoder {
		load = models.LoadVAE
	}
	vae, err := load(models.NewWeights(f), scale)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return vae, func() { f.Close() }, nil
}
