// plugin_generic_residuals.go: PluginResidualSource, the ResidualSource of
// any third-party plugin with the ResidualProvider role. Every U-Net call
// it copies x [N, C, H, W] and the context [N, L, D] into a read-only input
// arena, clears one set of residual buffers named as models.Residuals
// (input_blocks.0 .. middle_block, shaped for the U-Net's config and this
// latent; the controlnet adapter's buffers, controlnet_buffers.go), grants
// them writable and asks the plugin (Residuals, with the user's
// parameters) to write what it adds; a buffer it leaves alone adds zero.
//
// Strength: when the plugin does not declare a "strength" parameter the
// host owns it (default 1): 0 skips the plugin, any other value scales the
// residuals after the call. A plugin that declares it gets it as any other
// parameter and is not scaled.
//
// It does not schedule (every call runs the plugin), treat CFG halves
// differently or use device buffers: host memory only, so it works with
// any compute device (a U-Net on a GPU uploads CPU residuals).
package host

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// PluginResidualSource is a ResidualSource backed by a ResidualProvider
// plugin. Residuals it returns live in its buffers and stay valid until the
// next call; calls must not overlap.
type PluginResidualSource struct {
	plugin   ResidualPlugin
	params   sdk.Params
	unet     models.UNetConfig
	strength float64 // host-side scale (1 when the plugin owns strength)

	bufs   *residualBuffers
	inputs *inputArena
	calls  int
}

// NewPluginResidualSource makes the source for a U-Net of cfg. params are
// the user's; hostStrength says the host owns "strength" (it is taken out
// of the parameters the plugin sees).
func NewPluginResidualSource(p ResidualPlugin, cfg models.UNetConfig, params sdk.Params, hostStrength bool) (*PluginResidualSource, error) {
	s := &PluginResidualSource{plugin: p, unet: cfg, strength: 1}
	if !hostStrength {
		s.params = params
		return s, nil
	}
	for _, x := range params {
		if x.Name != StrengthParam {
			s.params = append(s.params, x)
			continue
		}
		f, err := strconv.ParseFloat(x.Value, 64)
		if err != nil {
			return nil, fmt.Errorf("plugin %q: parameter %q: %q is not a float", p.Name(), StrengthParam, x.Value)
		}
		s.strength = f
	}
	return s, nil
}

// Residuals implements ResidualSource for x [N, C, H, W], t [N] and
// context [N, L, D].
func (s *PluginResidualSource) Residuals(ctx context.Context, x *nn.Tensor, t []float32, uctx *nn.Tensor) (models.Residuals, error) {
	if s.strength == 0 {
		return nil, nil
	}
	if len(x.Shape) != 4 || len(uctx.Shape) != 3 || uctx.Shape[0] != x.Shape[0] || len(t) != x.Shape[0] {
		return nil, fmt.Errorf("plugin %q: residuals for x %v, t [%d], context %v: batch sizes differ", s.plugin.Name(), x.Shape, len(t), uctx.Shape)
	}
	n, h, w := x.Shape[0], x.Shape[2], x.Shape[3]
	if s.bufs != nil && !s.bufs.fits(n, h, w) {
		if err := s.closeBuffers(); err != nil {
			return nil, err
		}
	}
	if s.bufs == nil {
		b, err := newResidualBuffers(s.unet, n, h, w)
		if err != nil {
			return nil, fmt.Errorf("plugin %q: %w", s.plugin.Name(), err)
		}
		s.bufs = b
	}
	if err := s.bufs.zeroRows(0, n); err != nil {
		return nil, err
	}
	outs, err := s.bufs.rowRefs(0, n) // [N, C_i, H_i, W_i] each, writable
	if err != nil {
		return nil, fmt.Errorf("plugin %q: %w", s.plugin.Name(), err)
	}
	in, err := s.putInputs(x, uctx)
	if err != nil {
		return nil, fmt.Errorf("plugin %q: %w", s.plugin.Name(), err)
	}
	if _, err := s.plugin.Residuals(ctx, &sdk.ResidualsRequest{
		X: in[0], Timesteps: slices.Clone(t), Context: in[1], Outputs: outs, Params: s.params,
	}); err != nil {
		return nil, fmt.Errorf("plugin %q: residuals: %w", s.plugin.Name(), err)
	}
	s.calls++
	if s.strength != 1 {
		f := float32(s.strength)
		for _, d := range s.bufs.data {
			for i := range d {
				d[i] *= f
			}
		}
	}
	return s.bufs.residuals()
}

// putInputs copies x and the context into the input arena (a larger one
// when they do not fit).
func (s *PluginResidualSource) putInputs(x, c *nn.Tensor) ([]*sdk.Tensor, error) {
	return putInputs(&s.inputs, x, c, func() { s.closeInputs() })
}

// Calls counts the plugin's Residuals calls so far.
func (s *PluginResidualSource) Calls() int { return s.calls }

func (s *PluginResidualSource) unmap(a *Arena) error {
	if u, ok := s.plugin.(arenaUnmapper); ok {
		return u.Unmap(context.Background(), a)
	}
	return nil
}

func (s *PluginResidualSource) closeBuffers() error {
	if s.bufs == nil {
		return nil
	}
	err := errors.Join(s.unmap(s.bufs.arena), s.bufs.close())
	s.bufs = nil
	return err
}

func (s *PluginResidualSource) closeInputs() error {
	if s.inputs == nil {
		return nil
	}
	err := errors.Join(s.unmap(s.inputs.arena), s.inputs.close())
	s.inputs = nil
	return err
}

// Close has the plugin unmap the buffers and frees them.
func (s *PluginResidualSource) Close() error {
	return errors.Join(s.closeBuffers(), s.closeInputs())
}
