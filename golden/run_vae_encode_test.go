// run_vae_encode_test.go runs "vae_encode" cases: the checkpoint's VAE
// encodes an image in [-1, 1] to the latent mean times scale_factor.
package golden

import "github.com/sdbridge/sdbridge/nn"

// runVAEEncode runs a "vae_encode" case.
func runVAEEncode(c *Case) (Result, error) {
	vae, closeFn, err := loadGoldenVAE(c, true)
	if err != nil {
		return nil, err
	}
	defer closeFn()
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
