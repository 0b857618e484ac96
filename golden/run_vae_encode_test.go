// run_vae_encode_test.go runs "vae_encode" cases: the checkpoint's VAE
// encodes an image in [-1, 1] to the latent mean times scale_factor. On a
// GPU the encoder runs as models.VAEEncoderCUDA.
package golden

import (
	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
)

// runVAEEncode runs a "vae_encode" case on the CPU.
func runVAEEncode(c *Case) (Result, error) { return vaeEncodeCase(c, nil) }

// runVAEEncodeGPU runs a "vae_encode" case on d's GPU.
func runVAEEncodeGPU(c *Case, d *host.Device) (Result, []string, error) {
	res, err := vaeEncodeCase(c, d)
	return res, nil, err
}

// imageEncoder is the VAE encoder a case runs: *models.VAE or its CUDA twin.
type imageEncoder interface {
	Encode(img *nn.Tensor) (*nn.Tensor, error)
}

// vaeEncodeCase runs a "vae_encode" case on d (nil: the CPU).
func vaeEncodeCase(c *Case, d *host.Device) (_ Result, err error) {
	cpu, closeFn, err := loadGoldenVAE(c, true)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	var vae imageEncoder = cpu
	if d.OnGPU() {
		g, gerr := models.NewVAEEncoderCUDA(d.GPU, cpu)
		if gerr != nil {
			return nil, gerr
		}
		defer closeGPU(g.Close, &err)
		vae = g
	}
	data, shape, err := c.Input("in.image")
	if err != nil {
		return nil, err
	}
	mean, err := vae.Encode(nn.From(data, shape...)) // [B, 4, H/8, W/8]
	if err != nil {
		return nil, err
	}
	return Result{"out.latent_mean": {Shape: mean.Shape, Data: mean.Data}}, nil
}
