// plugin_generic_cond.go: PluginConditioner, the Conditioner of any
// third-party plugin with the Conditioner role. At construction it has the
// plugin encode the prompt and the negative prompt once each (EncodePrompt,
// with the user's parameters) and checks the announced context shape
// [1, L, D] against the U-Net's context width D; every step it asks for the
// context at the U-Net's timestep (Conditioning), written in place into one
// of two buffers (uncond, cond), each in its own plugin-writable host arena, and hands
// that buffer to the denoiser without copying. A step at the same timestep
// as the last one reuses the buffer.
//
// It is ELLA's adapter (ella.go) without ELLA's specifics: no modes, no
// schedule batching, no CLIP concatenation, no device buffers (host memory
// only, so it does not depend on the compute device: a U-Net on a GPU
// uploads the context as it does any other). A plugin restart loses its
// prompt handles: the next step fails and names the plugin.
package host

import (
	"context"
	"errors"
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// PluginConditioner is a Conditioner backed by a Conditioner plugin.
type PluginConditioner struct {
	plugin ConditionerPlugin
	params sdk.Params
	halves [2]*condHalf // uncond, cond
	starts int          // plugin process starts when encoded (-1: unknown)
	calls  int
}

// condHalf is the encoded prompt or negative prompt and its buffer.
type condHalf struct {
	handle string
	arena  *Arena        // plugin-writable, holds the buffer alone
	ref    sdk.TensorRef // [1, L, D] in the arena, plugin-writable
	view   *nn.Tensor    // [1, L, D] over the same memory
	lastT  float32
	valid  bool
}

// NewPluginConditioner encodes prompt and negative through p; contextDim
// is the U-Net's cross-attention width.
func NewPluginConditioner(ctx context.Context, p ConditionerPlugin, params sdk.Params, contextDim int, prompt, negative string) (*PluginConditioner, error) {
	if contextDim < 1 {
		return nil, fmt.Errorf("plugin %q: the U-Net's context width is unknown", p.Name())
	}
	c := &PluginConditioner{plugin: p, params: params, starts: pluginStartsOf(p)}
	for i, text := range []string{negative, prompt} {
		h, err := c.encode(ctx, text, i == 1, contextDim)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.halves[i] = h
	}
	return c, nil
}

// pluginStartsOf is p's process start count, or -1 if it does not say.
func pluginStartsOf(p any) int {
	if s, ok := p.(restartCounter); ok {
		return s.Starts()
	}
	return -1
}

// encode has the plugin prepare one text and gives it a buffer.
func (c *PluginConditioner) encode(ctx context.Context, text string, cond bool, dim int) (*condHalf, error) {
	what, name := "negative prompt", "uncond"
	if cond {
		what, name = "prompt", "cond"
	}
	resp, err := c.plugin.EncodePrompt(ctx, &sdk.EncodePromptRequest{Text: text, Params: c.params})
	if err != nil {
		return nil, fmt.Errorf("plugin %q: encoding the %s: %w", c.plugin.Name(), what, err)
	}
	s := resp.ContextShape
	fail := func(err error) (*condHalf, error) {
		c.plugin.ReleasePrompt(ctx, resp.Handle)
		return nil, err
	}
	switch {
	case len(s) != 3 || s[0] != 1 || s[1] < 1 || s[2] < 1:
		return fail(fmt.Errorf("plugin %q announced context shape %v for the %s, want [1, L, %d]", c.plugin.Name(), s, what, dim))
	case s[2] != dim:
		return fail(fmt.Errorf("plugin %q: context width %d does not match the U-Net's %d (shape %v)", c.plugin.Name(), s[2], dim, s))
	}
	n := s[1] * s[2]
	a, err := NewArena(c.plugin.Name()+"-"+name, 4*n+arenaAlign, true)
	if err != nil {
		return fail(fmt.Errorf("plugin %q: %w", c.plugin.Name(), err))
	}
	buf := a.AllocFloat32(n) // [1, L, D]
	h := &condHalf{handle: resp.Handle, arena: a, view: nn.From(buf, s...)}
	if h.ref, err = RefOf(c.plugin.Name()+"."+name, buf, s, true); err != nil {
		a.Close()
		return fail(fmt.Errorf("plugin %q: %w", c.plugin.Name(), err))
	}
	return h, nil
}

// Context implements Conditioner: the context [1, L, D] of the cond or
// uncond prompt at U-Net timestep t, valid until the next call for the
// same half.
func (c *PluginConditioner) Context(ctx context.Context, t float32, cond bool) (*nn.Tensor, error) {
	h := c.halves[0]
	if cond {
		h = c.halves[1]
	}
	if h == nil {
		return nil, fmt.Errorf("plugin %q: conditioner is closed", c.plugin.Name())
	}
	if h.valid && h.lastT == t {
		return h.view, nil
	}
	if st := pluginStartsOf(c.plugin); st != c.starts {
		return nil, fmt.Errorf("plugin %q restarted during the generation; its prompt handles are gone", c.plugin.Name())
	}
	h.valid = false
	if _, err := c.plugin.Conditioning(ctx, &sdk.ConditioningRequest{
		Handle: h.handle, Timesteps: []float32{t}, Out: sdk.Ref(h.ref), Params: c.params,
	}); err != nil {
		return nil, fmt.Errorf("plugin %q: conditioning at t=%g: %w", c.plugin.Name(), t, err)
	}
	c.calls++
	h.lastT, h.valid = t, true
	return h.view, nil // [1, L, D]
}

// Calls counts the plugin's Conditioning calls so far.
func (c *PluginConditioner) Calls() int { return c.calls }

// Close releases the prompt handles, has the plugin unmap the buffers and
// frees them. Contexts returned earlier must not be used afterwards.
func (c *PluginConditioner) Close() error {
	var errs []error
	same := pluginStartsOf(c.plugin) == c.starts
	u, unmap := c.plugin.(arenaUnmapper)
	for i, h := range c.halves {
		if h == nil {
			continue
		}
		if same {
			errs = append(errs, c.plugin.ReleasePrompt(context.Background(), h.handle))
			if unmap {
				errs = append(errs, u.Unmap(context.Background(), h.arena))
			}
		}
		errs = append(errs, h.arena.Close())
		c.halves[i] = nil
	}
	return errors.Join(errs...)
}
