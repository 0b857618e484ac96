// timing.go: the timed part of cudacheck: first the ceilings (device copy
// bandwidth, upload from pageable and from pinned memory, SGEMM with and
// without TF32, fp16 GemmEx), then the ops. Each case is warmed up, then
// timed as the median of 5 repeats of a batch of calls sized to ~20 ms,
// with the device's stream synchronised before reading the host clock.
// Outputs are preallocated so allocation stays out of the numbers. It
// does not rotate input sets (the full sizes exceed the 50 MB L2 except
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

// sizes are the problem sizes of the timed cases: full on a GPU, tiny in
// tests on the stand-in libraries.
type sizes struct {
	copyBytes, uploadBytes int
	gemmN                  int // square GEMM size
	attnL                  int // attention tokens per batch item
	hw                     int // latent side for group norm, conv and the stack
}

var (
	fullSizes  = sizes{copyBytes: 1 << 30, uploadBytes: 256 << 20, gemmN: 4096, attnL: 4096, hw: 64}
	smallSizes = sizes{copyBytes: 1 << 20, uploadBytes: 1 << 20, gemmN: 64, attnL: 64, hw: 8}
)

func timeAll(g *nn.GPU, sz sizes) {
	if g.BLAS == nil {
		fail("timings", fmt.Errorf("no cuBLAS"))
		return
	}
	guard("copy setup", func() error {
		size := sz.copyBytes
		a, err := g.Dev.Alloc(size)
		if err != nil {
			return err
		}
		defer a.Free()
		b, err := g.Dev.Alloc(size)
		if err != nil {
			return err
		}
		defer b.Free()
		if err := a.FillUint32(0x3f800000, size/4); err != nil {
			return err
		}
		bench(g, fmt.Sprintf("device-to-device copy %d MiB (GB/s counts read + write)", size>>20), 0, float64(2*size), func() error {
			return b.CopyFrom(a, size)
		})
		host := make([]byte, sz.uploadBytes)
		for i := range host {
			host[i] = byte(i * 7)
		}
		bench(g, fmt.Sprintf("upload %d MiB from pageable host memory", len(host)>>20), 0, float64(len(host)), func() error {
			return b.UploadBytes(host)
		})
		unreg, err := g.Dev.RegisterHost(host)
		if err != nil {
			return err
		}
		defer unreg()
		bench(g, fmt.Sprintf("upload %d MiB from registered (pinned) host memory", len(host)>>20), 0, float64(len(host)), func() error {
			return b.UploadBytes(host)
		})
		return nil
	})
	n := sz.gemmN
	flops := float64(2 * n * n * n)
	guard("sgemm setup", func() error {
		a, b, c := must(g, 1, n, n), must(g, 1, n, n), must(g, 1, n, n)
		defer a.Free()
		defer b.Free()
		defer c.Free()
		bench(g, fmt.Sprintf("sgemm fp32 %d^3 (no TF32)", n), flops, 0, func() error {
			return g.BLAS.Sgemm(false, false, n, n, n, 1, a.Buf, n, b.Buf, n, 0, c.Buf, n)
		})
		if err := g.BLAS.SetTF32(true); err != nil {
			return err
		}
		defer g.BLAS.SetTF32(false)
		bench(g, fmt.Sprintf("sgemm %d^3 with TF32 tensor cores allowed", n), flops, 0, func() error {
			return g.BLAS.Sgemm(false, false, n, n, n, 1, a.Buf, n, b.Buf, n, 0, c.Buf, n)
		})
		return nil
	})
	guard("gemmex setup", func() error {
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
		bench(g, fmt.Sprintf("gemmex fp16 in/out, fp32 accumulate, %d^3", n), flops, 0, func() error {
			return g.BLAS.GemmEx(false, false, n, n, n, 1, bufs[0], n, bufs[1], n, 0, bufs[2], n, cuda.R16F, cuda.R16F)
		})
		return nil
	})
	guard("attention setup", func() error {
		const b, c, heads = 2, 320, 8
		l := sz.attnL
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
		bench(g, fmt.Sprintf("attention fp32 [2,%d,320] heads 8 (scores materialised)", l), flops, 0, func() error {
			return g.AttentionInto(out, scores, q, k, v, heads, 0)
		})
		return nil
	})
	hw := sz.hw
	guard("groupnorm setup", func() error {
		x := must(g, 1, 2, 320, hw, hw)
		y, err := g.Empty(2, 320, hw, hw)
		if err != nil {
			return err
		}
		w, bi := must(g, 1, 320), must(g, 1, 320)
		for _, t := range []*nn.GPUTensor{x, y, w, bi} {
			defer t.Free()
		}
		bytes := float64(2 * 4 * x.Numel())
		bench(g, fmt.Sprintf("groupnorm+silu fp32 [2,320,%d,%d] g32 (L2-resident at 64x64; GB/s counts 1 read + 1 write)", hw, hw), 0, bytes, func() error {
			return g.GroupNormInto(y, x, w, bi, 32, 1e-5, true)
		})
		return nil
	})
	guard("conv setup", func() error {
		x := must(g, 1, 2, 320, hw, hw)
		w, bi := must(g, 0.05, 320, 320, 3, 3), must(g, 1, 320)
		y, err := g.Empty(2, 320, hw, hw)
		if err != nil {
			return err
		}
		cols, err := g.Empty(320*9, hw*hw)
		if err != nil {
			return err
		}
		for _, t := range []*nn.GPUTensor{x, w, bi, y, cols} {
			defer t.Free()
		}
		flops := float64(2 * 2 * 320 * hw * hw * 320 * 9)
		bench(g, fmt.Sprintf("conv3x3 fp32 [2,320,%d,%d]->320 (im2col + SGEMM)", hw, hw), flops, 0, func() error {
			return g.Conv2dInto(y, cols, x, w, bi, 1, 1)
		})
		return nil
	})
	// The fp16 conv both ways: im2col + cuBLAS (the default) against the
	// implicit-GEMM tensor-core kernel (nn.ConvImplicitGEMM), outputs
	// compared, so the next GPU session can pick the default.
	for _, algo := range []struct {
		name string
		algo nn.ConvAlgo
	}{{"im2col + GemmEx", nn.ConvIm2col}, {"implicit GEMM, mma.m16n8k16", nn.ConvImplicitGEMM}} {
		guard("conv fp16 "+algo.name, func() error {
			h := g.WithDType(nn.GPUF16)
			if h == g { // WithDType returned g itself: copy before setting the algorithm
				v := *g
				h = &v
			}
			h.ConvAlgo = algo.algo
			xc, wc, bc := randT(1, 2, 320, hw, hw), randT(0.05, 320, 320, 3, 3), randT(1, 320) // [2,320,hw,hw], [320,320,3,3], [320]
			x, w, bi := up(h, xc), up(h, wc), up(h, bc)
			for _, t := range []*nn.GPUTensor{x, w, bi} {
				defer t.Free()
			}
			y, err := h.Conv2d(x, w, bi, 1, 1) // [2, 320, hw, hw]
			if err != nil {
				return err
			}
			defer y.Free()
			want := (&nn.Conv2d{Weight: wc, Bias: bc, Stride: 1, Padding: 1}).Forward(xc) // [2, 320, hw, hw]
			compare(fmt.Sprintf("conv3x3 fp16 [2,320,%d,%d]->320 (%s) vs CPU", hw, hw, algo.name), down(y), want.Data, 1e-2)
			flops := float64(2 * 2 * 320 * hw * hw * 320 * 9)
			bench(h, fmt.Sprintf("conv3x3 fp16 [2,320,%d,%d]->320 (%s)", hw, hw, algo.name), flops, 0, func() error {
				t, err := h.Conv2d(x, w, bi, 1, 1)
				if err == nil {
					err = t.Free()
				}
				return err
			})
			return nil
		})
	}
}
