// text_cuda_test.go checks the text models' GPU forwards (CLIPCUDA,
// T5CUDA, ELLACUDA) against the CPU models on small generated files with
// the real key layouts, on the stand-in CUDA libraries (kernels run by the
// CUDA C emulator), in F32 (rel L2 <= 1e-5) and F16 (<= 1e-2) mode, in one
// child process (the driver loads once per process). T5 runs in fp32 in
// both modes (t5_cuda.go), so it is held to 1e-5 in both, including on an
// encoder whose feed-forward overflows fp16.
package models

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/nn"
)

func TestTextModelsCUDA(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	out := cudatest.RunChild(t, "TestTextModelsCUDAChild", cudatest.Build(t))
	if testing.Verbose() {
		t.Log(out)
	}
}

func TestTextModelsCUDAChild(t *testing.T) {
	if !cudatest.InChild() {
		t.Skip("run by TestTextModelsCUDA")
	}
	g, err := nn.OpenGPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	g.Poison = true // an element no kernel wrote reads NaN and fails the check
	for _, m := range []struct {
		dt  nn.GPUDType
		tol float64
	}{{nn.GPUF32, 1e-5}, {nn.GPUF16, 1e-2}} {
		g.DType = m.dt
		t.Run(m.dt.String(), func(t *testing.T) {
			t.Run("clip", func(t *testing.T) { checkCLIPCUDA(t, g, m.tol) })
			t.Run("t5", func(t *testing.T) { checkT5CUDA(t, g) })
			t.Run("ella", func(t *testing.T) { checkELLACUDA(t, g, m.tol) })
			t.Run("t5 into ella on the device", func(t *testing.T) { checkT5ELLACUDA(t, g, m.tol) })
			t.Run("real head widths", func(t *testing.T) { checkTextHeadWidthsCUDA(t, g, m.tol) })
		})
	}
	g.DType = nn.GPUF16
	t.Run("t5 fp16 overflow", func(t *testing.T) { checkT5CUDAOverflow(t, g) })
}

// TestTextActOf checks that every activation name the CPU text models
// accept maps to the GPU activation with the same maths (compared on a few
// points with the CPU function), and that an unknown name is refused (no
// GPU needed).
func TestTextActOf(t *testing.T) {
	ref := map[nn.TextAct]func(float64) float64{
		nn.TextReLU: func(x float64) float64 { return math.Max(x, 0) },
		nn.TextGELU: func(x float64) float64 { return 0.5 * x * (1 + math.Erf(x/math.Sqrt2)) },
		nn.TextGELUTanh: func(x float64) float64 {
			return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
		},
		nn.TextQuickGELU: func(x float64) float64 { return x / (1 + math.Exp(-1.702*x)) },
		nn.TextSiLU:      func(x float64) float64 { return x / (1 + math.Exp(-x)) },
	}
	probe := []float32{-3, -2.5, -1, -0.25, 0.5, 1.5, 3} // erf and tanh GELU differ by 3.7e-4 at -2.5
	check := func(name string, f func(*nn.Tensor)) {
		t.Run(name, func(t *testing.T) {
			act, err := textActOf(name)
			if err != nil {
				t.Fatal(err)
			}
			x := nn.From(append([]float32(nil), probe...), len(probe)) // [P]
			f(x)
			for i, p := range probe {
				if want := ref[act](float64(p)); math.Abs(float64(x.Data[i])-want) > 1e-4*max(1, math.Abs(want)) {
					t.Fatalf("%s maps to %v, which at %v gives %v, the CPU %v", name, act, p, want, x.Data[i])
				}
			}
		})
	}
	for name, f := range clipActivations {
		check(name, f)
	}
	for name, f := range t5Activations {
		check(name, f)
	}
	if got, err := textActOf("swish"); err == nil {
		t.Errorf("textActOf(swish) = %v, want an error", got)
	}
}

// textClose fails t unless got has want's shape, is finite, and is within
// rel L2 tol of want.
func textClose(t *testing.T, what string, got, want *nn.Tensor, tol float64) {
	t.Helper()
	if !slices.Equal(got.Shape, want.Shape) {
		t.Fatalf("%s: shape %v, want %v", what, got.Shape, want.Shape)
	}
	var num, den float64
	for i, w := range want.Data {
		v := float64(got.Data[i])
		if math.IsNaN(v) || math.IsInf(v, 0) {
			t.Fatalf("%s: element %d is %v (want %v)", what, i, v, w)
		}
		num += (v - float64(w)) * (v - float64(w))
		den += float64(w) * float64(w)
	}
	rel := math.Sqrt(num / max(den, 1e-300))
	if !(rel <= tol) {
		t.Fatalf("%s: rel L2 %.3g > %.0e", what, rel, tol)
	}
	t.Logf("%s %v: rel L2 %.3g (tol %.0e)", what, got.Shape, rel, tol)
}

// textErrMatch fails t unless the GPU error equals the CPU one.
func textErrMatch(t *testing.T, what string, gpu, cpu error) {
	t.Helper()
	if cpu == nil || gpu == nil || gpu.Error() != cpu.Error() {
		t.Errorf("%s: GPU error %v, CPU error %v (want the same, non-nil)", what, gpu, cpu)
	}
}

func checkCLIPCUDA(t *testing.T, g *nn.GPU, tol float64) {
	for _, act := range []string{"quick_gelu", "gelu"} {
		t.Run(act, func(t *testing.T) {
			m, err := LoadCLIPText(NewWeights(vcOpen(t, vcComponent(clipLDM))), CLIPTextOptions{HiddenAct: act})
			if err != nil {
				t.Fatal(err)
			}
			c, err := NewCLIPCUDA(g, m)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			full := [][]int{{98, 5, 17, 99, 99, 99, 99, 99}, {98, 42, 43, 44, 45, 99, 99, 99}}
			for _, tc := range []struct {
				name string
				ids  [][]int
				skip int
			}{
				{"batch 2 full length", full, 1},
				{"clip skip 2", full, 2},
				{"5 tokens", [][]int{{98, 7, 8, 9, 99}}, 0},
				{"clip skip 3 of 3", full, 3},
			} {
				t.Run(tc.name, func(t *testing.T) {
					want, err := m.EncodeSkip(tc.ids, tc.skip)
					if err != nil {
						t.Fatal(err)
					}
					got, err := c.EncodeSkip(tc.ids, tc.skip)
					if err != nil {
						t.Fatal(err)
					}
					textClose(t, "clip", got, want, tol)
				})
			}
			t.Run("sync after a patch", func(t *testing.T) {
				w := m.Layers[0].MLP.FC1.Weight
				old := w.Clone()
				defer copy(w.Data, old.Data)
				nn.Scale(w, 1.5)
				if err := c.Sync([]*nn.Tensor{w}); err != nil {
					t.Fatal(err)
				}
				want, _ := m.Encode(full)
				got, err := c.Encode(full)
				if err != nil {
					t.Fatal(err)
				}
				textClose(t, "clip patched", got, want, tol)
				copy(w.Data, old.Data)
				if err := c.Sync([]*nn.Tensor{w}); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("errors", func(t *testing.T) {
				for _, tc := range []struct {
					name string
					ids  [][]int
					skip int
				}{
					{"skip out of range", full, 4},
					{"id outside the vocabulary", [][]int{{98, 100}}, 1},
					{"ragged", [][]int{{98, 99}, {98}}, 1},
					{"too long", [][]int{make([]int, 9)}, 1},
					{"empty", nil, 1},
				} {
					_, gerr := c.EncodeSkip(tc.ids, tc.skip)
					_, cerr := m.EncodeSkip(tc.ids, tc.skip)
					textErrMatch(t, tc.name, gerr, cerr)
				}
			})
		})
	}
}

// t5Fixture loads the tiny T5 encoder of t5_fixture_test.go, gated
// (gated-gelu) or not (relu), with edit applied to its tensors.
func t5Fixture(t *testing.T, gated bool, edit func(*fixTensor)) *T5Encoder {
	t.Helper()
	cfg := fixT5Config()
	if !gated {
		cfg["feed_forward_proj"] = "relu"
	}
	ts := fixEdit(fixT5Tensors(3, gated), func(x *fixTensor) bool {
		if edit != nil {
			edit(x)
		}
		return true
	})
	e, err := LoadT5Encoder(fixT5Dir(t, cfg, ts))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func checkT5CUDA(t *testing.T, g *nn.GPU) {
	ids := [][]int{{3, 9, 14, 1, 0, 0}, {5, 6, 7, 8, 19, 1}}
	mask := [][]bool{{true, true, true, true, false, false}, {true, true, true, true, true, true}}
	for _, gated := range []bool{true, false} {
		t.Run(fmt.Sprintf("gated %v", gated), func(t *testing.T) {
			e := t5Fixture(t, gated, nil)
			c, err := NewT5CUDA(g, e)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, tc := range []struct {
				name string
				ids  [][]int
				mask [][]bool
			}{
				{"padding mask", ids, mask},
				{"no mask", ids, nil},
				{"one row", ids[1:], nil},
				{"a row with every key masked", ids, [][]bool{make([]bool, 6), mask[1]}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					want, err := e.Encode(tc.ids, tc.mask)
					if err != nil {
						t.Fatal(err)
					}
					got, err := c.Encode(tc.ids, tc.mask)
					if err != nil {
						t.Fatal(err)
					}
					textClose(t, "t5", got, want, 1e-5)    // fp32 whatever g.DType
					y, err := c.EncodeGPU(tc.ids, tc.mask) // [B, L, D]
					if err != nil {
						t.Fatal(err)
					}
					defer y.Free()
					if y.DType != nn.GPUF32 {
						t.Errorf("EncodeGPU dtype %s with g.DType %s, want f32", y.DType, g.DType)
					}
				})
			}
			t.Run("errors", func(t *testing.T) {
				for _, tc := range []struct {
					name string
					ids  [][]int
					mask [][]bool
				}{
					{"no tokens", [][]int{{}}, nil},
					{"id outside the vocabulary", [][]int{{3, 20}}, nil},
					{"ragged", [][]int{{3, 4}, {3}}, nil},
					{"mask rows", ids, mask[:1]},
					{"mask length", ids[:1], [][]bool{{true}}},
				} {
					_, gerr := c.Encode(tc.ids, tc.mask)
					_, cerr := e.Encode(tc.ids, tc.mask)
					textErrMatch(t, tc.name, gerr, cerr)
					if !errors.Is(gerr, ErrT5Input) {
						t.Errorf("%s: GPU error %v does not wrap ErrT5Input", tc.name, gerr)
					}
				}
			})
		})
	}
}

// checkT5CUDAOverflow runs, with g.DType fp16, an encoder whose `wo`
// outputs exceed fp16's range (the T5 v1.1 failure in fp16): the GPU
// encoder runs it in fp32 and must match the CPU's fp32 result.
func checkT5CUDAOverflow(t *testing.T, g *nn.GPU) {
	e := t5Fixture(t, true, func(x *fixTensor) {
		if strings.HasSuffix(x.Name, "DenseReluDense.wo.weight") {
			for i := range x.Vals {
				x.Vals[i] *= 32768
			}
		}
	})
	ids := [][]int{{3, 9, 14, 11, 2, 1}}
	// The test only means something if the fp32 feed-forward really leaves
	// fp16's range: check block 0's FF output on the embedded tokens.
	h := nn.New(1, 6, e.Config.DModel) // [1, L, D]
	for i, id := range ids[0] {
		copy(h.Data[i*e.Config.DModel:], e.Embed.Data[id*e.Config.DModel:(id+1)*e.Config.DModel])
	}
	ff := e.Blocks[0].FF.Forward(e.Blocks[0].FFNorm.Forward(h)) // [1, L, D]
	peak := 0.0
	for _, v := range ff.Data {
		peak = max(peak, math.Abs(float64(v)))
	}
	if peak <= f16Max {
		t.Fatalf("fixture FF peak %g does not overflow fp16 (max %d)", peak, f16Max)
	}
	t.Logf("block 0 feed-forward peak %.4g (fp16 max %d)", peak, f16Max)
	c, err := NewT5CUDA(g, e)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want, err := e.Encode(ids, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Encode(ids, nil)
	if err != nil {
		t.Fatal(err)
	}
	textClose(t, "t5 with fp16-overflowing FF", got, want, 1e-5)
}

func checkELLACUDA(t *testing.T, g *nn.GPU, tol float64) {
	for _, heads := range []int{0, 4} {
		t.Run(fmt.Sprintf("heads %d", heads), func(t *testing.T) {
			e, err := openFixELLA(t, fixELLATensors(4), heads)
			if err != nil {
				t.Fatal(err)
			}
			c, err := NewELLACUDA(g, e)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			x0, x1 := ellaFeatures(1, 1, 7), ellaFeatures(2, 1, 7)
			both := nn.Concat(0, x0, x1) // [2, 7, Din]
			ts := []float32{999, 500.5, 1}
			for _, tc := range []struct {
				name     string
				gpu, cpu func() (*nn.Tensor, error)
			}{
				{"steps of one prompt",
					func() (*nn.Tensor, error) { return c.ForwardSteps(x0, ts) },
					func() (*nn.Tensor, error) { return e.ForwardSteps(x0, ts) }},
				{"rows with their own t",
					func() (*nn.Tensor, error) { return c.Forward(both, ts[:2]) },
					func() (*nn.Tensor, error) { return e.Forward(both, ts[:2]) }},
				{"rows sharing one t",
					func() (*nn.Tensor, error) { return c.Forward(both, ts[2:]) },
					func() (*nn.Tensor, error) { return e.Forward(both, ts[2:]) }},
				{"prepared once, conditioned twice", func() (*nn.Tensor, error) {
					text, err := c.Prepare(x1)
					if err != nil {
						return nil, err
					}
					defer text.Free()
					if _, err := c.Conditioning(text, ts[:1]); err != nil {
						return nil, err
					}
					return c.Conditioning(text, ts)
				}, func() (*nn.Tensor, error) {
					text, err := e.Prepare(x1)
					if err != nil {
						return nil, err
					}
					return e.Conditioning(text, ts)
				}},
				{"prepared from device features", func() (*nn.Tensor, error) {
					xd, err := g.Upload(both) // [2, 7, Din]
					if err != nil {
						return nil, err
					}
					defer xd.Free()
					text, err := c.PrepareGPU(xd)
					if err != nil {
						return nil, err
					}
					defer text.Free()
					return c.Conditioning(text, ts[1:])
				}, func() (*nn.Tensor, error) { return e.Forward(both, ts[1:]) }},
			} {
				t.Run(tc.name, func(t *testing.T) {
					want, err := tc.cpu()
					if err != nil {
						t.Fatal(err)
					}
					got, err := tc.gpu()
					if err != nil {
						t.Fatal(err)
					}
					textClose(t, "ella", got, want, tol)
				})
			}
			t.Run("errors", func(t *testing.T) {
				three := nn.Concat(0, x0, x1, x0) // [3, 7, Din]
				for _, tc := range []struct {
					name string
					x    *nn.Tensor
					ts   []float32
				}{
					{"row and timestep counts", three, ts[:2]},
					{"no timesteps", x0, nil},
					{"input width", nn.New(1, 7, fixEDin+1), ts},
				} {
					_, gerr := c.Forward(tc.x, tc.ts)
					_, cerr := e.Forward(tc.x, tc.ts)
					textErrMatch(t, tc.name, gerr, cerr)
				}
				_, gerr := c.ForwardSteps(both, ts)
				_, cerr := e.ForwardSteps(both, ts)
				textErrMatch(t, "steps of two prompts", gerr, cerr)
			})
		})
	}
}

// checkT5ELLACUDA feeds T5CUDA.EncodeGPU's fp32 features straight into
// ELLACUDA.PrepareGPU (cast to g.DType there) and compares the context
// with the CPU chain.
func checkT5ELLACUDA(t *testing.T, g *nn.GPU, tol float64) {
	enc := t5Fixture(t, true, nil)
	din := enc.Config.DModel
	rng := rand.New(rand.NewPCG(9, 9))
	ts := fixEdit(fixELLATensors(6), func(x *fixTensor) bool {
		if x.Name == "connector.proj_in.weight" { // widen proj_in to T5's d_model
			x.Shape = []int{fixEW, din}
			x.Vals = fixVals(rng, fixEW*din, 0.5)
		}
		return true
	})
	e, err := openFixELLA(t, ts, 0)
	if err != nil {
		t.Fatal(err)
	}
	ids := [][]int{{3, 9, 14, 11, 2, 1}}
	steps := []float32{981, 741, 501.5, 261, 21}
	feats, err := enc.Encode(ids, nil) // [1, L, D]
	if err != nil {
		t.Fatal(err)
	}
	want, err := e.ForwardSteps(feats, steps) // [S, Q, W]
	if err != nil {
		t.Fatal(err)
	}
	tc, err := NewT5CUDA(g, enc)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	ec, err := NewELLACUDA(g, e)
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	fd, err := tc.EncodeGPU(ids, nil) // [1, L, D] fp32
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Free()
	text, err := ec.PrepareGPU(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer text.Free()
	y, err := ec.ConditioningGPU(text, steps) // [S, Q, W]
	if err != nil {
		t.Fatal(err)
	}
	defer y.Free()
	if y.DType != g.DType {
		t.Errorf("context dtype %s, want the GPU's %s", y.DType, g.DType)
	}
	got, err := y.Download() // [S, Q, W]
	if err != nil {
		t.Fatal(err)
	}
	textClose(t, "t5 -> ella", got, want, tol)
}

// textLinear is a Linear [out, in] (+ bias [out]) of uniform values in
// ±scale/sqrt(in), seeded.
func textLinear(rng *rand.Rand, in, out int, bias bool, scale float64) *nn.Linear {
	l := &nn.Linear{Weight: nn.New(out, in)} // [out, in]
	for i := range l.Weight.Data {
		l.Weight.Data[i] = float32((2*rng.Float64() - 1) * scale / math.Sqrt(float64(in)))
	}
	if bias {
		l.Bias = nn.New(out) // [out]
		for i := range l.Bias.Data {
			l.Bias.Data[i] = float32((2*rng.Float64() - 1) * 0.1)
		}
	}
	return l
}

// textVec is a [n] vector of values around mean.
func textVec(rng *rand.Rand, n int, mean float64) *nn.Tensor {
	v := nn.New(n) // [n]
	for i := range v.Data {
		v.Data[i] = float32(mean + 0.2*(2*rng.Float64()-1))
	}
	return v
}

// checkTextHeadWidthsCUDA runs the head widths of the released models,
// which the fixtures' tiny widths do not reach: ELLA-SD1.5's 96 (768 / 8
// heads, through the fp16 tensor-core attention in F16 mode) and
// FLAN-T5's d_kv 64, with longer sequences (T5: 40 tokens, past the exact
// buckets; ELLA: 64 latents attending to 64 + 23 keys).
func checkTextHeadWidthsCUDA(t *testing.T, g *nn.GPU, tol float64) {
	rng := rand.New(rand.NewPCG(21, 1))
	t.Run("ella head width 96", func(t *testing.T) {
		const w, heads, q, din, emb, ct, n = 192, 2, 64, 24, 32, 16, 23
		e := &ELLA{Width: w, InputDim: din, NumLatents: q, TimeChannels: ct, TimeEmbedDim: emb, Heads: heads}
		e.Time = ELLATimeEmbedding{Linear1: textLinear(rng, ct, emb, true, 1), Linear2: textLinear(rng, emb, emb, true, 1), Channels: ct}
		e.Latents = nn.New(q, w) // [Q, W]
		for i := range e.Latents.Data {
			e.Latents.Data[i] = float32(rng.NormFloat64())
		}
		e.TimeAware = textLinear(rng, emb, w, true, 1)
		e.ProjIn = textLinear(rng, din, w, true, 1)
		for range 2 {
			e.Blocks = append(e.Blocks, ELLABlock{
				LN1:  ELLAAdaLayerNorm{Linear: textLinear(rng, emb, 2*w, true, 0.5)},
				LN2:  ELLAAdaLayerNorm{Linear: textLinear(rng, emb, 2*w, true, 0.5)},
				LNFF: ELLAAdaLayerNorm{Linear: textLinear(rng, emb, 2*w, true, 0.5)},
				Attn: ELLAAttention{Q: textLinear(rng, w, w, true, 1), K: textLinear(rng, w, w, true, 1),
					V: textLinear(rng, w, w, true, 1), Out: textLinear(rng, w, w, true, 1), Heads: heads},
				MLP: ELLAMLP{FC: textLinear(rng, w, 4*w, true, 1), Proj: textLinear(rng, 4*w, w, true, 0.5)},
			})
		}
		x := nn.New(1, n, din) // [1, N, Din]
		for i := range x.Data {
			x.Data[i] = float32(rng.NormFloat64())
		}
		steps := []float32{999, 666.5, 333, 1}
		want, err := e.ForwardSteps(x, steps)
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewELLACUDA(g, e)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got, err := c.ForwardSteps(x, steps)
		if err != nil {
			t.Fatal(err)
		}
		textClose(t, "ella", got, want, tol)
	})
	t.Run("t5 d_kv 64", func(t *testing.T) {
		const d, heads, dkv, ff, vocab, n = 48, 3, 64, 80, 50, 40
		cfg := T5Config{DModel: d, DKV: dkv, DFF: ff, NumHeads: heads, NumLayers: 2, VocabSize: vocab,
			NumBuckets: 32, MaxDistance: 128, FeedForwardProj: "gated-gelu", LayerNormEps: 1e-6, ModelType: "t5"}
		e := &T5Encoder{Config: cfg, Embed: nn.New(vocab, d)} // [V, D]
		for i := range e.Embed.Data {
			e.Embed.Data[i] = float32(rng.NormFloat64() * 4)
		}
		e.RelBias = T5RelativeBias{Table: nn.New(32, heads), NumBuckets: 32, MaxDistance: 128} // [NB, H]
		for i := range e.RelBias.Table.Data {
			e.RelBias.Table.Data[i] = float32(rng.NormFloat64())
		}
		for range cfg.NumLayers {
			e.Blocks = append(e.Blocks, T5Block{
				AttnNorm: T5RMSNorm{Weight: textVec(rng, d, 1), Eps: 1e-6},
				Attn: T5Attention{Q: textLinear(rng, d, heads*dkv, false, 0.3), K: textLinear(rng, d, heads*dkv, false, 0.3),
					V: textLinear(rng, d, heads*dkv, false, 1), O: textLinear(rng, heads*dkv, d, false, 1), Heads: heads},
				FFNorm: T5RMSNorm{Weight: textVec(rng, d, 1), Eps: 1e-6},
				FF: T5FeedForward{Wi0: textLinear(rng, d, ff, false, 1), Wi1: textLinear(rng, d, ff, false, 1),
					Wo: textLinear(rng, ff, d, false, 1), Act: nn.GELUTanh, ActName: "gelu_new"},
			})
		}
		e.Final = T5RMSNorm{Weight: textVec(rng, d, 1), Eps: 1e-6}
		ids := [][]int{make([]int, n), make([]int, n)}
		mask := [][]bool{make([]bool, n), make([]bool, n)}
		for b := range ids {
			for i := range n {
				ids[b][i] = rng.IntN(vocab)
				mask[b][i] = b == 0 || i < 29 // row 1 padded after 29 tokens
			}
		}
		want, err := e.Encode(ids, mask)
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewT5CUDA(g, e)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got, err := c.Encode(ids, mask)
		if err != nil {
			t.Fatal(err)
		}
		textClose(t, "t5", got, want, 1e-5) // fp32 whatever g.DType
	})
}
