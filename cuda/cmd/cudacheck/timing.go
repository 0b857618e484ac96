// timing.go: the timed part of cudacheck. Each case is warmed up, then
// timed as the median of 5 repeats of a batch of calls sized to ~20 ms,
// with the device's stream synchronised before reading the host clock.
// Outputs are preallocated so allocation stays out of the numbers. It
// does not rotate input sets (the sizes here exceed the 50 MB L2 except
// group norm, noted in its line).
package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/nn"
)

// bench times fn and prints ms, TFLOP/s (flops > 0) and GB/s (bytes > 0).
func bench(g *nn.GPU, name string, flops, bytes float64, fn func() error) {
	guard("time "+name, func() error {
		for i := 0; i < 2; i++ {
			if err := fn(); err != nil {
				return err
			}
		}
		if err := g.Dev.Synchronize(); err != nil {
			return err
		}
		t0 := time.Now()
		if err := fn(); err != nil {
			return err
		}
		if err := g.Dev.Synchronize(); err != nil {
			return err
		}
		one := time.Since(t0)
		inner := max(1, min(50, int(20*time.Millisecond/max(one, time.Microsecond))))
		var ts []float64
		for r := 0; r < 5; r++ {
			t := time.Now()
			for i := 0; i < inner; i++ {
				if err := fn(); err != nil {
					return err
				}
			}
			if err := g.Dev.Synchronize(); err != nil {
				return err
			}
			ts = append(ts, time.Since(t).Seconds()/float64(inner))
		}
		slices.Sort(ts)
		med := ts[len(ts)/2]
		line := fmt.Sprintf("TIME %s: %.3f ms (min %.3f, max %.3f, %d calls x 5)", name, med*1e3, ts[0]*1e3, ts[len(ts)-1]*1e3, inner)
		if flops > 0 {
			line += fmt.Sprintf(", %.1f TFLOP/s", flops/med/1e12)
		}
		if bytes > 0 {
			line += fmt.Sprintf(", %.0f GB/s", bytes/med/1e9)
		}
		logf("%s", line)
		return nil
	})
}

// must allocates a random GPU tensor or panics into guard.
func must(g *nn.GPU, a float32, shape ...int) *nn.GPUTensor {
	return up(g, randT(a, shape...))
}

func timeAll(g *nn.GPU) {
	if g.BLAS == nil {
		fail("timings", fmt.Errorf("no cuBLAS"))
		return
	}
	const n = 4096
	guard("sgemm 4096^3 setup", func() error {
		a, b, c := must(g, 1, n, n), must(g, 1, n, n), must(g, 1, n, n)
		defer a.Free()
		defer b.Free()
		defer c.Free()
		bench(g, "sgemm fp32 4096^3 (no TF32)", 2*n*n*n, 0, func() error {
			return g.BLAS.Sgemm(false, false, n, n, n, 1, a.Buf, n, b.Buf, n, 0, c.Buf, n)
		})
		return nil
	})
	guard("gemmex 4096^3 setup", func() error {
		h := make([]uint16, n*n)
		for i := range h {
			h[i] = uint16(rng.Uint32()&0x3bff) | uint16(rng.Uint32()&0x8000) // |x| < 1, random sign
		}
		var bufs []*cuda.Buffer
		for i := 0; i < 3; i++ {
			b, err := g.Dev.Alloc(2 * n * n)
			if err != nil {
				return err
			}
			defer b.Free()
			if err := b.UploadUint16(h); err != nil {
				return err
			}
			bufs = append(bufs, b)
		}
		bench(g, "gemmex fp16 in/out, fp32 accumulate, 4096^3", 2*n*n*n, 0, func() error {
			return g.BLAS.GemmEx(false, false, n, n, n, 1, bufs[0], n, bufs[1], n, 0, bufs[2], n, cuda.R16F, cuda.R16F)
		})
		return nil
	})
	guard("attention setup", func() error {
		const b, l, c, heads = 2, 4096, 320, 8
		q, k, v := must(g, 2, b, l, c), must(g, 2, b, l, c), must(g, 1, b, l, c)
		out, err := g.Empty(b, l, c)
		if err != nil {
			return err
		}
		scores, err := g.Empty(heads, l, l)
		if err != nil {
			return err
		}
		for _, t := range []*nn.GPUTensor{q, k, v, out, scores} {
			defer t.Free()
		}
		flops := float64(2 * 2 * b * heads * l * l * (c / heads))
		bench(g, "attention fp32 [2,4096,320] heads 8 (scores materialised)", flops, 0, func() error {
			return g.AttentionInto(out, scores, q, k, v, heads, 0)
		})
		return nil
	})
	guard("groupnorm setup", func() error {
		x := must(g, 1, 2, 320, 64, 64)
		y, err := g.Empty(2, 320, 64, 64)
		if err != nil {
			return err
		}
		w, bi := must(g, 1, 320), must(g, 1, 320)
		for _, t := range []*nn.GPUTensor{x, y, w, bi} {
			defer t.Free()
		}
		bytes := float64(2 * 4 * x.Numel())
		bench(g, "groupnorm+silu fp32 [2,320,64,64] g32 (10.5 MB: L2-resident; GB/s counts 1 read + 1 write)", 0, bytes, func() error {
			return g.GroupNormInto(y, x, w, bi, 32, 1e-5, true)
		})
		return nil
	})
	guard("conv setup", func() error {
		x := must(g, 1, 2, 320, 64, 64)
		w, bi := must(g, 0.05, 320, 320, 3, 3), must(g, 1, 320)
		y, err := g.Empty(2, 320, 64, 64)
		if err != nil {
			return err
		}
		cols, err := g.Empty(320*9, 64*64)
		if err != nil {
			return err
		}
		for _, t := range []*nn.GPUTensor{x, w, bi, y, cols} {
			defer t.Free()
		}
		flops := float64(2 * 2 * 320 * 4096 * 320 * 9)
		bench(g, "conv3x3 fp32 [2,320,64,64]->320 (im2col + SGEMM)", flops, 0, func() error {
			return g.Conv2dInto(y, cols, x, w, bi, 1, 1)
		})
		return nil
	})
}
