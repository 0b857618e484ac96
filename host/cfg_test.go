// cfg_test.go checks the CFG denoiser against hand computation with a fake
// eps model that records what it was given: the batch order [uncond, cond],
// c_in scaling, the continuous timestep, u + cfg*(c-u), x - sigma*eps, and
// the plugin hooks.
package host

import (
	"context"
	"math"
	"testing"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
)

// fakeEps returns eps = context[n, 0, 0] + x (per batch item n), and records calls.
type fakeEps struct {
	calls    int
	lastX    *nn.Tensor
	lastT    []float32
	lastCtx  *nn.Tensor
	lastRes  models.Residuals
	batchLen []int
}

func (f *fakeEps) Forward(x *nn.Tensor, ts []float32, ctx *nn.Tensor, res models.Residuals) (*nn.Tensor, error) {
	f.calls++
	f.lastX, f.lastT, f.lastCtx, f.lastRes = x.Clone(), append([]float32(nil), ts...), ctx, res
	f.batchLen = append(f.batchLen, x.Shape[0])
	out := nn.New(x.Shape...)
	per := len(x.Data) / x.Shape[0]
	stride := ctx.Shape[1] * ctx.Shape[2]
	for i := range out.Data {
		out.Data[i] = ctx.Data[(i/per)*stride] + x.Data[i]
	}
	return out, nil
}

func ctxOf(v float32, l int) *nn.Tensor {
	t := nn.New(1, l, 2)
	for i := range t.Data {
		t.Data[i] = v
	}
	return t
}

func TestCFGDenoiser(t *testing.T) {
	s := sd15(t)
	sigma := 2.5
	cIn := 1 / math.Sqrt(sigma*sigma+1)
	x := nn.From([]float32{1, -2}, 1, 2, 1, 1)
	for _, tc := range []struct {
		name          string
		scale         float64
		uncondLen     int
		wantCalls     int
		wantBatchSize int
	}{
		{"batched", 7, 3, 1, 2},
		{"different lengths", 7, 5, 2, 1},
		{"cfg 1 skips uncond", 1, 3, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &fakeEps{}
			d := &CFGDenoiser{Model: m, Schedule: s, Scale: tc.scale, Cond: ctxOf(10, 3), Uncond: ctxOf(4, tc.uncondLen)}
			out, err := d.Denoise(x, sigma)
			if err != nil {
				t.Fatal(err)
			}
			if m.calls != tc.wantCalls || m.batchLen[0] != tc.wantBatchSize {
				t.Fatalf("calls %d batches %v, want %d calls of batch %d", m.calls, m.batchLen, tc.wantCalls, tc.wantBatchSize)
			}
			if want := float32(s.SigmaToT(sigma)); m.lastT[0] != want {
				t.Errorf("timestep %v, want %v", m.lastT[0], want)
			}
			for i, xv := range x.Data {
				xs := float64(xv) * cIn
				c, u := 10+xs, 4+xs
				eps := u + tc.scale*(c-u)
				want := float64(xv) - sigma*eps
				if math.Abs(float64(out.Data[i])-want) > 1e-5*math.Abs(want) {
					t.Errorf("denoised[%d] = %v, want %v", i, out.Data[i], want)
				}
			}
			if tc.name == "batched" && m.lastCtx.Data[0] != 4 {
				t.Errorf("first half of the batch is not the uncond context")
			}
		})
	}
}

type fixedConditioner struct{ calls []bool }

func (f *fixedConditioner) Context(_ context.Context, _ float32, cond bool) (*nn.Tensor, error) {
	f.calls = append(f.calls, cond)
	if cond {
		return ctxOf(1, 4), nil
	}
	return ctxOf(0, 4), nil
}

type recordResiduals struct {
	x   *nn.Tensor
	t   []float32
	ctx *nn.Tensor
}

func (r *recordResiduals) Residuals(_ context.Context, x *nn.Tensor, t []float32, ctx *nn.Tensor) (models.Residuals, error) {
	r.x, r.t, r.ctx = x, t, ctx
	return models.Residuals{models.MiddleBlockResidual: nn.New(x.Shape...)}, nil
}

func TestCFGHooks(t *testing.T) {
	s := sd15(t)
	m := &fakeEps{}
	cond := &fixedConditioner{}
	res := &recordResiduals{}
	d := &CFGDenoiser{Model: m, Schedule: s, Scale: 3, Conditioner: cond, Residuals: res}
	x := nn.From([]float32{0.5, 0.25, 1, 2}, 2, 2, 1, 1) // batch 2
	out, err := d.Denoise(x, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(cond.calls) != 2 {
		t.Errorf("conditioner calls %v, want cond and uncond", cond.calls)
	}
	if res.x.Shape[0] != 4 || res.ctx.Shape[0] != 4 || len(res.t) != 4 {
		t.Errorf("residual source saw x %v, ctx %v, t %v; want batch 4 (2 x CFG)", res.x.Shape, res.ctx.Shape, res.t)
	}
	if _, ok := m.lastRes[models.MiddleBlockResidual]; !ok {
		t.Error("residuals not passed to the model")
	}
	// eps = u + 3(c-u) with c = 1 + xs, u = 0 + xs: eps = xs + 3.
	xs := 0.5 / math.Sqrt(2)
	if want := 0.5 - (xs + 3); math.Abs(float64(out.Data[0])-want) > 1e-6 {
		t.Errorf("denoised[0] = %v, want %v", out.Data[0], want)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d.Ctx = ctx
	if _, err := d.Denoise(x, 1); err == nil {
		t.Error("cancelled context not honoured")
	}
}
