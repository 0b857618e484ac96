// run_vae_decode_test.go runs "vae_decode" cases: the checkpoint's VAE
// decodes a sampler-space latent; the image is compared unclamped. On a GPU
// the decoder runs as models.VAEDecoderCUDA.
package golden

import (
	"fmt"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

// runVAEDecode runs a "vae_decode" case on the CPU.
func runVAEDecode(c *Case) (Result, error) { return vaeDecodeCase(c, nil) }

// runVAEDecodeGPU runs a "vae_decode" case on d's GPU.
func runVAEDecodeGPU(c *Case, d *host.Device) (Result, []string, error) {
	res, err := vaeDecodeCase(c, d)
	return res, nil, err
}

// vaeDecodeCase runs a "vae_decode" case on d (nil: the CPU).
func vaeDecodeCase(c *Case, d *host.Device) (_ Result, err error) {
	cpu, closeFn, err := loadGoldenVAE(c, false)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	var vae host.ImageDecoder = cpu
	if d.OnGPU() {
		g, gerr := models.NewVAEDecoderCUDA(d.GPU, cpu)
		if gerr != nil {
			return nil, gerr
		}
		defer closeGPU(g.Close, &err)
		vae = g
	}
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
