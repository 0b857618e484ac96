// unet_cuda_graph.go: optional CUDA graph replay of the U-Net forward
// (UNetCUDA.Graphs, off by default until it is checked on a GPU). The
// first call for an input shape (batch, latent size, context length,
// residual names and shapes, dtype) builds a graph: the cuBLAS handle gets
// a fixed workspace (cuda.BLAS.FixWorkspace), input buffers and all
// scratch come from a private arena, one plain forward warms up (compiles
// the kernels, grows the arena to the forward's peak), then a second one is
// captured (cuda.Device.Capture). Later calls of that shape copy the
// inputs into the graph's buffers, upload the timestep sinusoid, and
// replay the whole forward with one launch.
//
// The private arena is what keeps replays safe: scratch freed during the
// capture returns to it, and nothing else allocates there. Weights are
// read at their device addresses, so patching them in place (Sync, or on
// the device) is seen by later replays. It does not update graphs in place,
// share scratch between shapes, or capture the ControlNet.
package models

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/nn"
)

// unetGraph is one captured forward with its buffers.
type unetGraph struct {
	arena          *cuda.Arena // every buffer below, plus the scratch
	x, s, ctx, out *nn.GPUTensor
	res            GPUResiduals
	graph          *cuda.Graph
}

func (gr *unetGraph) close() error {
	err := gr.graph.Close()
	if gr.arena != nil {
		if cerr := gr.arena.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// graphKey names the inputs' shapes, residual names and dtype.
func graphKey(dt nn.GPUDType, x, ctx *nn.GPUTensor, res GPUResiduals) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s x%v ctx%v", dt, x.Shape, ctx.Shape)
	for _, name := range slices.Sorted(maps.Keys(res)) {
		if t := res[name]; t != nil {
			fmt.Fprintf(&b, " %s%v", name, t.Shape)
		}
	}
	return b.String()
}

// runGraph runs the forward through the graph for these inputs' shapes
// (building it first if needed). The result is the graph's output buffer:
// valid until the next call of this shape.
func (c *UNetCUDA) runGraph(x *nn.GPUTensor, timesteps []float32, ctx *nn.GPUTensor, res GPUResiduals) (*nn.GPUTensor, error) {
	for _, t := range append([]*nn.GPUTensor{x, ctx}, slices.Collect(maps.Values(res))...) {
		if t != nil && t.DType != c.g.DType {
			return nil, fmt.Errorf("graph: input %v is %s, the GPU runs %s", t.Shape, t.DType, c.g.DType)
		}
	}
	key := graphKey(c.g.DType, x, ctx, res)
	gr, ok := c.graphs[key]
	if !ok {
		var err error
		if gr, err = c.buildGraph(x, timesteps, ctx, res); err != nil {
			return nil, fmt.Errorf("graph for %s: %w", key, err)
		}
		if c.graphs == nil {
			c.graphs = map[string]*unetGraph{}
		}
		c.graphs[key] = gr
	}
	if err := gr.setInputs(c.U.TimeEmbed, x, timesteps, ctx, res); err != nil {
		return nil, fmt.Errorf("graph inputs: %w", err)
	}
	if err := gr.graph.Launch(); err != nil {
		return nil, fmt.Errorf("graph launch: %w", err)
	}
	return gr.out, nil
}

// setInputs queues copies of the inputs into the graph's buffers (the
// sinusoid is uploaded from the host).
func (gr *unetGraph) setInputs(te *TimeEmbed, x *nn.GPUTensor, timesteps []float32, ctx *nn.GPUTensor, res GPUResiduals) error {
	if err := gr.x.Buf.CopyFromAsync(x.Buf, x.Bytes()); err != nil {
		return fmt.Errorf("x: %w", err)
	}
	if err := gr.ctx.Buf.CopyFromAsync(ctx.Buf, ctx.Bytes()); err != nil {
		return fmt.Errorf("context: %w", err)
	}
	for name, t := range res {
		if t == nil {
			continue
		}
		if err := gr.res[name].Buf.CopyFromAsync(t.Buf, t.Bytes()); err != nil {
			return fmt.Errorf("residual %q: %w", name, err)
		}
	}
	if err := gr.s.Set(sinusoid(te, timesteps)); err != nil {
		return fmt.Errorf("timestep embedding: %w", err)
	}
	return nil
}

// buildGraph allocates the graph's buffers in a private arena, warms up
// with one plain forward and captures a second one.
func (c *UNetCUDA) buildGraph(x *nn.GPUTensor, timesteps []float32, ctx *nn.GPUTensor, res GPUResiduals) (*unetGraph, error) {
	g := c.g
	gr := &unetGraph{arena: g.Dev.NewArena(cuda.ArenaOptions{Name: "unet graph"}), res: GPUResiduals{}}
	shared, poison := g.Arena, g.Poison
	g.Arena, g.Poison = gr.arena, false // no memsets: they cannot be captured
	defer func() { g.Arena, g.Poison = shared, poison }()
	fail := func(err error) (*unetGraph, error) {
		gr.close()
		return nil, err
	}
	// A fixed cuBLAS workspace keeps the captured GEMMs off cuBLAS's own
	// allocations (an old cuBLAS without cublasSetWorkspace keeps its pool).
	if g.BLAS != nil {
		if err := g.BLAS.FixWorkspace(); err != nil && !errors.Is(err, cuda.ErrMissingSymbol) {
			return fail(err)
		}
	}
	var err error
	if gr.x, err = g.Empty(x.Shape...); err != nil { // [B, in, H, W]
		return fail(err)
	}
	if gr.ctx, err = g.Empty(ctx.Shape...); err != nil { // [B, L, D]
		return fail(err)
	}
	if gr.s, err = g.Empty(x.Shape[0], c.U.TimeEmbed.Channels); err != nil { // [B, mc]
		return fail(err)
	}
	for name, t := range res {
		if t == nil {
			continue
		}
		if gr.res[name], err = g.Empty(t.Shape...); err != nil { // [B, C_i, H_i, W_i]
			return fail(err)
		}
	}
	if err := gr.setInputs(c.U.TimeEmbed, x, timesteps, ctx, res); err != nil {
		return fail(err)
	}
	warm := c.newRun()
	c.forwardFrom(warm, gr.x, gr.s, gr.ctx, gr.res)
	warm.release()
	if warm.err != nil {
		return fail(fmt.Errorf("warm-up forward: %w", warm.err))
	}
	r := c.newRun()
	gr.graph, err = g.Dev.Capture(func() error {
		gr.out = c.forwardFrom(r, gr.x, gr.s, gr.ctx, gr.res) // [B, out, H, W]
		return r.err
	})
	r.forget(gr.out)
	r.release() // the scratch goes back to the private arena
	if err != nil {
		return fail(err)
	}
	return gr, nil
}

// closeGraphs destroys every graph and its arena.
func (c *UNetCUDA) closeGraphs() error {
	var first error
	for key, gr := range c.graphs {
		if err := gr.close(); err != nil && first == nil {
			first = err
		}
		delete(c.graphs, key)
	}
	return first
}
