// maths_test.go checks every merge formula against a float64 reference
// written straight from spec §8 as explicit index loops (no shared code with
// the gemm-based implementation): LoCon 3x3, LoCon Tucker, LoHa and LoHa CP,
// LoKr in all decomposition shapes and Tucker, (IA)^3 on both axes, DoRA on
// both axes and PEFT's magnitude vector, full diff with bias, norm, a linear
// LoRA on a 1x1 conv and the reverse, PEFT alpha from metadata, block
// weights, several adapters in one pass, GLoRA (both forms), OFT (closed-form
// 2x2 Cayley) and the inpainting conv_in padding.
package lora

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Tiny synthetic checkpoint modules (ldm names, so they resolve).
const (
	kConv   = "input_blocks.1.0.in_layers.2"                          // [8, 6, 3, 3]
	kProj   = "input_blocks.1.1.proj_in"                              // [6, 6, 1, 1]
	kLinear = "input_blocks.1.1.transformer_blocks.0.ff.net.2"        // [6, 12]
	kOut    = "output_blocks.3.1.transformer_blocks.0.attn1.to_out.0" // [6, 6] + bias
	kNorm   = "input_blocks.1.1.norm"                                 // GroupNorm [6] + bias
	kTE     = "encoder.layers.0.self_attn.q_proj"                     // [5, 5] + bias (text encoder)
)

type mathsFixture struct {
	ckpt *memSource
	orig map[string][]float32 // checkpoint key -> values
	r    *rand.Rand
}

func newFixture() *mathsFixture {
	fx := &mathsFixture{ckpt: newMem(), orig: map[string][]float32{}, r: rand.New(rand.NewPCG(1, 2))}
	add := func(key string, shape ...int) {
		d := randn(fx.r, numel(shape), 0.5)
		fx.ckpt.put(key, d, shape...)
		fx.orig[key] = d
	}
	add(UNetPrefix+kConv+".weight", 8, 6, 3, 3)
	add(UNetPrefix+kConv+".bias", 8)
	add(UNetPrefix+kProj+".weight", 6, 6, 1, 1)
	add(UNetPrefix+kLinear+".weight", 6, 12)
	add(UNetPrefix+kOut+".weight", 6, 6)
	add(UNetPrefix+kOut+".bias", 6)
	add(UNetPrefix+kNorm+".weight", 6)
	add(UNetPrefix+kNorm+".bias", 6)
	add(TEPrefix+kTE+".weight", 5, 5)
	add(TEPrefix+kTE+".bias", 5)
	return fx
}

// f64 widens a float32 slice.
func f64(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

// refMatmul: [n, r] @ [r, m] in float64.
func refMatmul(a, b []float32, n, r, m int) []float64 {
	out := make([]float64, n*m)
	for i := 0; i < n; i++ {
		for j := 0; j < m; j++ {
			for p := 0; p < r; p++ {
				out[i*m+j] += float64(a[i*r+p]) * float64(b[p*m+j])
			}
		}
	}
	return out
}

// refTucker: out[o,c,k] = Σ_{i,j} t[i,j,k]·A(o,i)·B(j,c) with accessors.
func refTucker(t []float32, ri, rj, k, out, in int, A func(o, i int) float64, B func(j, c int) float64) []float64 {
	res := make([]float64, out*in*k)
	for o := 0; o < out; o++ {
		for c := 0; c < in; c++ {
			for y := 0; y < k; y++ {
				var s float64
				for i := 0; i < ri; i++ {
					for j := 0; j < rj; j++ {
						s += float64(t[(i*rj+j)*k+y]) * A(o, i) * B(j, c)
					}
				}
				res[(o*in+c)*k+y] = s
			}
		}
	}
	return res
}

// refKron4: kron(w1 [a,c,1,1], w2 [b,d,k]) -> [a*b, c*d, k] flattened.
func refKron4(w1 []float64, a, c int, w2 []float64, b, d, k int) []float64 {
	res := make([]float64, a*b*c*d*k)
	for i := 0; i < a; i++ {
		for j := 0; j < c; j++ {
			for p := 0; p < b; p++ {
				for q := 0; q < d; q++ {
					for y := 0; y < k; y++ {
						res[((i*b+p)*(c*d)+(j*d+q))*k+y] = w1[i*c+j] * w2[(p*d+q)*k+y]
					}
				}
			}
		}
	}
	return res
}

// additive returns W + m·s·ΔW.
func additive(w []float32, m, s float64, delta []float64) []float64 {
	out := make([]float64, len(w))
	for i := range w {
		out[i] = float64(w[i]) + m*s*delta[i]
	}
	return out
}

// merged plans adapters on the fixture and returns the merged key.
func (fx *mathsFixture) merged(t *testing.T, key string, ads ...Adapter) []float32 {
	t.Helper()
	p, err := NewPlan(fx.ckpt, ads)
	if err != nil {
		t.Fatalf("NewPlan: %v", err)
	}
	orig := fx.orig[key]
	dst := make([]float32, len(orig))
	if err := p.Apply(key, orig, dst); err != nil {
		t.Fatalf("Apply(%s): %v", key, err)
	}
	return dst
}

func check(t *testing.T, got []float32, want []float64) {
	t.Helper()
	if rel := relL2(got, want); rel > 2e-6 || math.IsNaN(rel) {
		i := 0
		for j := range got {
			if math.Abs(float64(got[j])-want[j]) > math.Abs(float64(got[i])-want[i]) {
				i = j
			}
		}
		t.Errorf("rel_l2 %.3g; worst index %d got %v want %v", rel, i, got[i], want[i])
	}
}

func TestMergeFormulas(t *testing.T) {
	type build func(fx *mathsFixture, a *memSource) (key string, m float64, want func(w []float32) []float64)
	const m = 0.7
	tests := []struct {
		name  string
		build build
	}{
		{"LoCon 3x3", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_resnets_0_conv1"
			down, up := randn(fx.r, 4*6*9, 1), randn(fx.r, 8*4, 1)
			a.put(mod+".lora_down.weight", down, 4, 6, 3, 3).put(mod+".lora_up.weight", up, 8, 4, 1, 1).put(mod+".alpha", []float32{2}, 1)
			return UNetPrefix + kConv + ".weight", m, func(w []float32) []float64 {
				return additive(w, m, 0.5, refMatmul(up, down, 8, 4, 54))
			}
		}},
		{"LoCon Tucker", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_input_blocks_1_0_in_layers_2"
			down, mid, up := randn(fx.r, 3*6, 1), randn(fx.r, 4*3*9, 1), randn(fx.r, 8*4, 1)
			a.put(mod+".lora_down.weight", down, 3, 6, 1, 1).put(mod+".lora_mid.weight", mid, 4, 3, 3, 3).
				put(mod+".lora_up.weight", up, 8, 4, 1, 1).put(mod+".alpha", []float32{1.5}, 1)
			return UNetPrefix + kConv + ".weight", m, func(w []float32) []float64 {
				d := refTucker(mid, 4, 3, 9, 8, 6, func(o, i int) float64 { return float64(up[o*4+i]) },
					func(j, c int) float64 { return float64(down[j*6+c]) })
				return additive(w, m, 1.5/3, d)
			}
		}},
		{"LoHa linear", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"
			w1a, w1b, w2a, w2b := randn(fx.r, 6*2, 1), randn(fx.r, 2*12, 1), randn(fx.r, 6*2, 1), randn(fx.r, 2*12, 1)
			a.put(mod+".hada_w1_a", w1a, 6, 2).put(mod+".hada_w1_b", w1b, 2, 12).put(mod+".hada_w2_a", w2a, 6, 2).
				put(mod+".hada_w2_b", w2b, 2, 12).put(mod+".alpha", []float32{1}, 1)
			return UNetPrefix + kLinear + ".weight", m, func(w []float32) []float64 {
				d1, d2 := refMatmul(w1a, w1b, 6, 2, 12), refMatmul(w2a, w2b, 6, 2, 12)
				for i := range d1 {
					d1[i] *= d2[i]
				}
				return additive(w, m, 0.5, d1)
			}
		}},
		{"LoHa CP conv", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_resnets_0_conv1"
			t1, t2 := randn(fx.r, 3*3*9, 1), randn(fx.r, 3*3*9, 1)
			w1a, w1b, w2a, w2b := randn(fx.r, 3*8, 1), randn(fx.r, 3*6, 1), randn(fx.r, 3*8, 1), randn(fx.r, 3*6, 1)
			a.put(mod+".hada_t1", t1, 3, 3, 3, 3).put(mod+".hada_t2", t2, 3, 3, 3, 3).
				put(mod+".hada_w1_a", w1a, 3, 8).put(mod+".hada_w1_b", w1b, 3, 6).
				put(mod+".hada_w2_a", w2a, 3, 8).put(mod+".hada_w2_b", w2b, 3, 6).put(mod+".alpha", []float32{3}, 1)
			return UNetPrefix + kConv + ".weight", m, func(w []float32) []float64 {
				rebuild := func(t, wa, wb []float32) []float64 {
					return refTucker(t, 3, 3, 9, 8, 6, func(o, i int) float64 { return float64(wa[i*8+o]) },
						func(j, c int) float64 { return float64(wb[j*6+c]) })
				}
				d1, d2 := rebuild(t1, w1a, w1b), rebuild(t2, w2a, w2b)
				for i := range d1 {
					d1[i] *= d2[i]
				}
				return additive(w, m, 1, d1)
			}
		}},
		{"LoKr full w1, decomposed w2, linear", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"
			w1, w2a, w2b := randn(fx.r, 2*3, 1), randn(fx.r, 3*2, 1), randn(fx.r, 2*4, 1)
			a.put(mod+".lokr_w1", w1, 2, 3).put(mod+".lokr_w2_a", w2a, 3, 2).put(mod+".lokr_w2_b", w2b, 2, 4).put(mod+".alpha", []float32{1}, 1)
			return UNetPrefix + kLinear + ".weight", m, func(w []float32) []float64 {
				return additive(w, m, 0.5, refKron4(f64(w1), 2, 3, refMatmul(w2a, w2b, 3, 2, 4), 3, 4, 1))
			}
		}},
		{"LoKr decomposed w1, full 4-D w2, conv", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_resnets_0_conv1"
			w1a, w1b, w2 := randn(fx.r, 2*1, 1), randn(fx.r, 1*3, 1), randn(fx.r, 4*2*9, 1)
			a.put(mod+".lokr_w1_a", w1a, 2, 1).put(mod+".lokr_w1_b", w1b, 1, 3).put(mod+".lokr_w2", w2, 4, 2, 3, 3).put(mod+".alpha", []float32{0.5}, 1)
			return UNetPrefix + kConv + ".weight", m, func(w []float32) []float64 {
				return additive(w, m, 0.5, refKron4(refMatmul(w1a, w1b, 2, 1, 3), 2, 3, f64(w2), 4, 2, 9))
			}
		}},
		{"LoKr both full: scale 1 whatever alpha", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_attentions_0_proj_in"
			w1, w2 := randn(fx.r, 2*3, 1), randn(fx.r, 3*2, 1)
			a.put(mod+".lokr_w1", w1, 2, 3).put(mod+".lokr_w2", w2, 3, 2).put(mod+".alpha", []float32{64}, 1)
			return UNetPrefix + kProj + ".weight", m, func(w []float32) []float64 {
				return additive(w, m, 1, refKron4(f64(w1), 2, 3, f64(w2), 3, 2, 1))
			}
		}},
		{"LoKr both decomposed: w2_b rank", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_attentions_0_proj_in"
			w1a, w1b, w2a, w2b := randn(fx.r, 3*1, 1), randn(fx.r, 1*2, 1), randn(fx.r, 2*4, 1), randn(fx.r, 4*3, 1)
			a.put(mod+".lokr_w1_a", w1a, 3, 1).put(mod+".lokr_w1_b", w1b, 1, 2).put(mod+".lokr_w2_a", w2a, 2, 4).
				put(mod+".lokr_w2_b", w2b, 4, 3).put(mod+".alpha", []float32{2}, 1)
			return UNetPrefix + kProj + ".weight", m, func(w []float32) []float64 {
				return additive(w, m, 0.5, refKron4(refMatmul(w1a, w1b, 3, 1, 2), 3, 2, refMatmul(w2a, w2b, 2, 4, 3), 2, 3, 1))
			}
		}},
		{"LoKr Tucker conv", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_resnets_0_conv1"
			w1, t2, w2a, w2b := randn(fx.r, 2*2, 1), randn(fx.r, 2*2*9, 1), randn(fx.r, 2*4, 1), randn(fx.r, 2*3, 1)
			a.put(mod+".lokr_w1", w1, 2, 2).put(mod+".lokr_t2", t2, 2, 2, 3, 3).put(mod+".lokr_w2_a", w2a, 2, 4).
				put(mod+".lokr_w2_b", w2b, 2, 3).put(mod+".alpha", []float32{1}, 1)
			return UNetPrefix + kConv + ".weight", m, func(w []float32) []float64 {
				w2 := refTucker(t2, 2, 2, 9, 4, 3, func(p, i int) float64 { return float64(w2a[i*4+p]) },
					func(j, q int) float64 { return float64(w2b[j*3+q]) })
				return additive(w, m, 0.5, refKron4(f64(w1), 2, 2, w2, 4, 3, 9))
			}
		}},
		{"IA3 rows", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_resnets_0_conv1"
			v := randn(fx.r, 8, 1)
			a.put(mod+".weight", v, 8).put(mod+".on_input", []float32{0}, 1)
			return UNetPrefix + kConv + ".weight", m, func(w []float32) []float64 {
				out := f64(w)
				for i := range out {
					out[i] *= 1 + m*float64(v[i/54])
				}
				return out
			}
		}},
		{"IA3 input channels", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_resnets_0_conv1"
			v := randn(fx.r, 6, 1)
			a.put(mod+".weight", v, 6).put(mod+".on_input", []float32{1}, 1)
			return UNetPrefix + kConv + ".weight", m, func(w []float32) []float64 {
				out := f64(w)
				for i := range out {
					out[i] *= 1 + m*float64(v[(i/9)%6])
				}
				return out
			}
		}},
		{"full diff", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "diffusion_model.output_blocks.3.1.transformer_blocks.0.attn1.to_out.0"
			d := randn(fx.r, 36, 1)
			a.put(mod+".diff", d, 6, 6).put(mod+".diff_b", randn(fx.r, 6, 1), 6)
			return UNetPrefix + kOut + ".weight", m, func(w []float32) []float64 { return additive(w, m, 1, f64(d)) }
		}},
		{"full diff_b on the bias", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "diffusion_model.output_blocks.3.1.transformer_blocks.0.attn1.to_out.0"
			db := randn(fx.r, 6, 1)
			a.put(mod+".diff", randn(fx.r, 36, 1), 6, 6).put(mod+".diff_b", db, 6)
			return UNetPrefix + kOut + ".bias", m, func(w []float32) []float64 { return additive(w, m, 1, f64(db)) }
		}},
		{"norm w_norm", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_attentions_0_norm"
			wn := randn(fx.r, 6, 1)
			a.put(mod+".w_norm", wn, 6).put(mod+".b_norm", randn(fx.r, 6, 1), 6)
			return UNetPrefix + kNorm + ".weight", m, func(w []float32) []float64 { return additive(w, m, 1, f64(wn)) }
		}},
		{"norm b_norm on the bias", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_attentions_0_norm"
			bn := randn(fx.r, 6, 1)
			a.put(mod+".w_norm", randn(fx.r, 6, 1), 6).put(mod+".b_norm", bn, 6)
			return UNetPrefix + kNorm + ".bias", m, func(w []float32) []float64 { return additive(w, m, 1, f64(bn)) }
		}},
		{"ComfyUI dotted names, no alpha", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "diffusion_model." + kLinear
			down, up := randn(fx.r, 3*12, 1), randn(fx.r, 6*3, 1)
			a.put(mod+".lora_down.weight", down, 3, 12).put(mod+".lora_up.weight", up, 6, 3)
			return UNetPrefix + kLinear + ".weight", m, func(w []float32) []float64 {
				return additive(w, m, 1, refMatmul(up, down, 6, 3, 12))
			}
		}},
		{"old diffusers attention processor names", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out"
			down, up := randn(fx.r, 2*6, 1), randn(fx.r, 6*2, 1)
			a.put(mod+"_lora.down.weight", down, 2, 6).put(mod+"_lora.up.weight", up, 6, 2)
			return UNetPrefix + kOut + ".weight", m, func(w []float32) []float64 {
				return additive(w, m, 1, refMatmul(up, down, 6, 2, 6))
			}
		}},
		{"linear LoRA on a 1x1 conv", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_attentions_0_proj_in"
			down, up := randn(fx.r, 2*6, 1), randn(fx.r, 6*2, 1)
			a.put(mod+".lora_down.weight", down, 2, 6).put(mod+".lora_up.weight", up, 6, 2).put(mod+".alpha", []float32{1}, 1)
			return UNetPrefix + kProj + ".weight", m, func(w []float32) []float64 {
				return additive(w, m, 0.5, refMatmul(up, down, 6, 2, 6))
			}
		}},
		{"4-D LoRA on a linear", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"
			down, up := randn(fx.r, 2*12, 1), randn(fx.r, 6*2, 1)
			a.put(mod+".lora_down.weight", down, 2, 12, 1, 1).put(mod+".lora_up.weight", up, 6, 2, 1, 1)
			return UNetPrefix + kLinear + ".weight", m, func(w []float32) []float64 {
				return additive(w, m, 1, refMatmul(up, down, 6, 2, 12)) // no alpha: scale 1
			}
		}},
		{"explicit scale tensor", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"
			down, up := randn(fx.r, 2*12, 1), randn(fx.r, 6*2, 1)
			a.put(mod+".lora_down.weight", down, 2, 12).put(mod+".lora_up.weight", up, 6, 2).
				put(mod+".alpha", []float32{8}, 1).put(mod+".scale", []float32{0.25}, 1)
			return UNetPrefix + kLinear + ".weight", m, func(w []float32) []float64 {
				return additive(w, m, 0.25, refMatmul(up, down, 6, 2, 12))
			}
		}},
		{"text encoder PEFT", func(fx *mathsFixture, a *memSource) (string, float64, func([]float32) []float64) {
			mod := "text_encoder.text_model." + kTE
			down, up := randn(fx.r, 2*5, 1), randn(fx.r, 5*2, 1)
			a.put(mod+".lora_A.weight", down, 2, 5).put(mod+".lora_B.weight", up, 5, 2)
			return TEPrefix + kTE + ".weight", 0.3, func(w []float32) []float64 {
				return additive(w, 0.3, 1, refMatmul(up, down, 5, 2, 5))
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newFixture()
			src := newMem()
			key, _, want := tt.build(fx, src)
			f := parse(t, src, nil)
			got := fx.merged(t, key, Adapter{File: f, UNet: m, TE: 0.3})
			check(t, got, want(fx.orig[key]))
		})
	}
}

// refDoRA is spec §8.1 in float64; inAxis selects the input-column norm.
func refDoRA(w []float32, delta []float64, mag []float32, s, m float64, out, in, k int, inAxis bool) []float64 {
	wc := make([]float64, len(w))
	for i := range w {
		wc[i] = float64(w[i]) + s*delta[i]
	}
	norm := func(o, c int) float64 {
		var ss float64
		for oo := 0; oo < out; oo++ {
			for cc := 0; cc < in; cc++ {
				if (!inAxis && oo != o) || (inAxis && cc != c) {
					continue
				}
				for y := 0; y < k; y++ {
					v := wc[(oo*in+cc)*k+y]
					ss += v * v
				}
			}
		}
		return math.Sqrt(ss)
	}
	res := make([]float64, len(w))
	for o := 0; o < out; o++ {
		for c := 0; c < in; c++ {
			g := 0.0
			if inAxis {
				g = float64(mag[c]) / (norm(o, c) + doraEps)
			} else {
				g = float64(mag[o]) / (norm(o, c) + doraEps)
			}
			for y := 0; y < k; y++ {
				i := (o*in+c)*k + y
				res[i] = float64(w[i]) + m*(g*wc[i]-float64(w[i]))
			}
		}
	}
	return res
}

func TestMergeDoRA(t *testing.T) {
	tests := []struct {
		name     string
		magShape []int
		magPart  string
		inAxis   bool
	}{
		{"output axis [out,1,1,1]", []int{8, 1, 1, 1}, ".dora_scale", false},
		{"output axis [out,1]", []int{8, 1}, ".dora_scale", false},
		{"input axis [1,in,1,1]", []int{1, 6, 1, 1}, ".dora_scale", true},
		{"PEFT magnitude vector [out]", []int{8}, ".lora_magnitude_vector.weight", false},
	}
	for _, tt := range tests {
		for _, m := range []float64{0, 0.6, 1} {
			t.Run(tt.name, func(t *testing.T) {
				fx := newFixture()
				mod := "lora_unet_down_blocks_0_resnets_0_conv1"
				down, up := randn(fx.r, 4*6*9, 1), randn(fx.r, 8*4, 1)
				mag := randn(fx.r, numel(tt.magShape), 1)
				for i := range mag {
					mag[i] = float32(math.Abs(float64(mag[i])) + 1)
				}
				src := newMem().put(mod+".lora_down.weight", down, 4, 6, 3, 3).put(mod+".lora_up.weight", up, 8, 4, 1, 1).
					put(mod+".alpha", []float32{2}, 1).put(mod+tt.magPart, mag, tt.magShape...)
				f := parse(t, src, nil)
				key := UNetPrefix + kConv + ".weight"
				if m == 0 {
					p, err := NewPlan(fx.ckpt, []Adapter{{File: f, UNet: m}})
					if err != nil {
						t.Fatal(err)
					}
					if len(p.Keys()) != 0 {
						t.Errorf("strength 0 still touches %v", p.Keys())
					}
					return // strength 0 gives W exactly: the tensor is left as stored
				}
				got := fx.merged(t, key, Adapter{File: f, UNet: m})
				want := refDoRA(fx.orig[key], refMatmul(up, down, 8, 4, 54), mag, 0.5, m, 8, 6, 9, tt.inAxis)
				check(t, got, want)
			})
		}
	}
}

func TestMergeSeveralAdaptersAndBlocks(t *testing.T) {
	fx := newFixture()
	r := fx.r
	// Adapter 1: kohya LoRA on the 1x1 proj_in (IN01) and the text encoder.
	d1, u1 := randn(r, 2*6, 1), randn(r, 6*2, 1)
	dt, ut := randn(r, 2*5, 1), randn(r, 5*2, 1)
	a1 := newMem().
		put("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", d1, 2, 6, 1, 1).
		put("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", u1, 6, 2, 1, 1).
		put("lora_unet_down_blocks_0_attentions_0_proj_in.alpha", []float32{1}, 1).
		put("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", dt, 2, 5).
		put("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", ut, 5, 2)
	// Adapter 2: PEFT on the same proj_in, alpha from diffusers metadata.
	d2, u2 := randn(r, 3*6, 1), randn(r, 6*3, 1)
	a2 := newMem().
		put("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", d2, 3, 6, 1, 1).
		put("unet.down_blocks.0.attentions.0.proj_in.lora_B.weight", u2, 6, 3, 1, 1)
	meta := map[string]string{"lora_adapter_metadata": `{"unet.r": 3, "unet.lora_alpha": 6, "unet.use_rslora": false}`}
	f1, f2 := parse(t, a1, nil), parse(t, a2, meta)
	blocks := make([]float64, 17)
	for i := range blocks {
		blocks[i] = 1
	}
	blocks[0], blocks[1] = 0.5, 0.25 // BASE (text encoder), IN01
	p, err := NewPlan(fx.ckpt, []Adapter{{File: f1, UNet: 0.8, TE: 0.6, Blocks: blocks}, {File: f2, UNet: -0.4}})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Keys(); len(got) != 2 {
		t.Fatalf("plan touches %v, want proj_in and q_proj", got)
	}
	key := UNetPrefix + kProj + ".weight"
	got := make([]float32, 36)
	if err := p.Apply(key, fx.orig[key], got); err != nil {
		t.Fatal(err)
	}
	want := additive(fx.orig[key], 0.8*0.25, 0.5, refMatmul(u1, d1, 6, 2, 6))
	delta2 := refMatmul(u2, d2, 6, 3, 6)
	for i := range want {
		want[i] += -0.4 * 2 * delta2[i]
	}
	check(t, got, want)

	tk := TEPrefix + kTE + ".weight"
	got = make([]float32, 25)
	copy(got, fx.orig[tk])
	if err := p.Apply(tk, got, got); err != nil { // dst aliasing orig is allowed
		t.Fatal(err)
	}
	check(t, got, additive(fx.orig[tk], 0.6*0.5, 1, refMatmul(ut, dt, 5, 2, 5)))
	if sig := p.Signature(tk); sig == "" || p.Signature("nope") != "" {
		t.Errorf("Signature(%s) = %q", tk, sig)
	}
}

func TestBlockWeightSlots(t *testing.T) {
	tests := []struct {
		local string
		comp  Component
		want  int
	}{
		{"input_blocks.0.0", UNet, 1},
		{"input_blocks.1.1.proj_in", UNet, 2},
		{"input_blocks.11.0.in_layers.2", UNet, 12},
		{"middle_block.1.proj_out", UNet, 13},
		{"output_blocks.0.0.skip_connection", UNet, 14},
		{"output_blocks.11.1.proj_in", UNet, 25},
		{"time_embed.0", UNet, -1},
		{"out.2", UNet, -1},
		{"encoder.layers.0.mlp.fc1", TextEncoder, 0},
	}
	for _, tt := range tests {
		t.Run(tt.local, func(t *testing.T) {
			if got := blockOf(&CkptModule{Local: tt.local, Component: tt.comp}); got != tt.want {
				t.Errorf("blockOf(%s) = %d, want %d", tt.local, got, tt.want)
			}
		})
	}
	v := make([]float64, 17)
	for i := range v {
		v[i] = float64(i + 10)
	}
	full, err := ExpandBlockWeights(v)
	if err != nil {
		t.Fatal(err)
	}
	// Omitted blocks get 1; named ones their value (lora_block_weight.py).
	want := []float64{10, 1, 11, 12, 1, 13, 14, 1, 15, 16, 1, 1, 1, 17, 1, 1, 1, 18, 19, 20, 21, 22, 23, 24, 25, 26}
	if diff := cmp.Diff(want, full); diff != "" {
		t.Errorf("expanded 17-vector (-want +got):\n%s", diff)
	}
	if _, err := ExpandBlockWeights(make([]float64, 12)); err == nil {
		t.Error("a 12-value vector was accepted")
	}
}

func TestMergeGLoRA(t *testing.T) {
	const m = 0.6
	t.Run("current form on a 3x3 conv", func(t *testing.T) {
		fx := newFixture()
		mod := "lora_unet_down_blocks_0_resnets_0_conv1"
		a1, a2, b1, b2 := randn(fx.r, 6*2, 1), randn(fx.r, 2*6, 1), randn(fx.r, 8*2, 1), randn(fx.r, 2*54, 1)
		src := newMem().put(mod+".a1.weight", a1, 6, 2).put(mod+".a2.weight", a2, 2, 6).
			put(mod+".b1.weight", b1, 8, 2).put(mod+".b2.weight", b2, 2, 6, 3, 3).put(mod+".alpha", []float32{1}, 1)
		key := UNetPrefix + kConv + ".weight"
		got := fx.merged(t, key, Adapter{File: parse(t, src, nil), UNet: m})
		w := fx.orig[key]
		// ΔW[o,c,s] = Σ_j (Σ_i W[o,i,s]·a1[i,j])·a2[j,c] + (b1 @ b2)[o, c*9+s]
		delta := refMatmul(b1, b2, 8, 2, 54)
		for o := 0; o < 8; o++ {
			for c := 0; c < 6; c++ {
				for s := 0; s < 9; s++ {
					var v float64
					for j := 0; j < 2; j++ {
						var t float64
						for i := 0; i < 6; i++ {
							t += float64(w[(o*6+i)*9+s]) * float64(a1[i*2+j])
						}
						v += t * float64(a2[j*6+c])
					}
					delta[(o*6+c)*9+s] += v
				}
			}
		}
		check(t, got, additive(w, m, 0.5, delta))
	})
	t.Run("old form on a linear", func(t *testing.T) {
		fx := newFixture()
		mod := "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"
		a1, a2, b1, b2 := randn(fx.r, 2*12, 1), randn(fx.r, 12*2, 1), randn(fx.r, 2*12, 1), randn(fx.r, 6*2, 1)
		src := newMem().put(mod+".a1.weight", a1, 2, 12).put(mod+".a2.weight", a2, 12, 2).
			put(mod+".b1.weight", b1, 2, 12).put(mod+".b2.weight", b2, 6, 2).put(mod+".alpha", []float32{4}, 1)
		key := UNetPrefix + kLinear + ".weight"
		got := fx.merged(t, key, Adapter{File: parse(t, src, nil), UNet: m})
		w := fx.orig[key]
		// ΔW = b2 @ b1 + (W @ a2) @ a1
		delta := refMatmul(b2, b1, 6, 2, 12)
		wa2 := refMatmul(w, a2, 6, 12, 2)
		for o := 0; o < 6; o++ {
			for c := 0; c < 12; c++ {
				for j := 0; j < 2; j++ {
					delta[o*12+c] += wa2[o*2+j] * float64(a1[j*12+c])
				}
			}
		}
		check(t, got, additive(w, m, 2, delta))
	})
}

// TestMergeOFT uses 2x2 blocks, whose Cayley transform has a closed form:
// Q = [[0, a], [−a, 0]] gives R = [[1−a², 2a], [−2a, 1−a²]] / (1 + a²).
func TestMergeOFT(t *testing.T) {
	for _, tt := range []struct {
		name  string
		mod   string
		alpha float32
		c     float64 // expected constraint
	}{
		{"kohya, constraint alpha*out", "oft_unet_down_blocks_0_resnets_0_conv1", 0.01, 0.08},
		{"kohya, loose constraint", "oft_unet_down_blocks_0_resnets_0_conv1", 10, 80},
		{"LyCORIS, constraint alpha", "lora_unet_down_blocks_0_resnets_0_conv1", 0.5, 0.5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const m = 0.6
			fx := newFixture()
			blocks := randn(fx.r, 4*2*2, 1)
			src := newMem().put(tt.mod+".oft_blocks", blocks, 4, 2, 2).put(tt.mod+".alpha", []float32{tt.alpha}, 1)
			key := UNetPrefix + kConv + ".weight"
			got := fx.merged(t, key, Adapter{File: parse(t, src, nil), UNet: m})
			w := fx.orig[key]
			av := make([]float64, 4)
			var ss float64
			for k := range av {
				av[k] = float64(blocks[k*4+1]) - float64(blocks[k*4+2])
				ss += 2 * av[k] * av[k]
			}
			n := math.Sqrt(ss)
			f := (math.Min(n, float64(float32(tt.c))) + 1e-8) / (n + 1e-8)
			want := make([]float64, len(w))
			for k := 0; k < 4; k++ {
				a := av[k] * f
				d := 1 + a*a
				r := [2][2]float64{{(1 - a*a) / d, 2 * a / d}, {-2 * a / d, (1 - a*a) / d}}
				for i := 0; i < 2; i++ {
					for j := 0; j < 2; j++ {
						id := 0.0
						if i == j {
							id = 1
						}
						r[i][j] = id + m*(r[i][j]-id)
					}
				}
				for j := 0; j < 2; j++ {
					for x := 0; x < 54; x++ {
						var v float64
						for i := 0; i < 2; i++ {
							v += r[i][j] * float64(w[(k*2+i)*54+x])
						}
						want[(k*2+j)*54+x] = v
					}
				}
			}
			check(t, got, want)
		})
	}
}

// TestCayleyOrthogonal checks R = (I+Q)(I−Q)⁻¹ on larger blocks: RᵀR = I
// and (I−Q)·R... = I+Q up to rounding.
func TestCayleyOrthogonal(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, bs := range []int{1, 3, 16, 40} {
		q := make([]float64, bs*bs)
		for i := 0; i < bs; i++ {
			for j := i + 1; j < bs; j++ {
				v := r.NormFloat64()
				q[i*bs+j], q[j*bs+i] = v, -v
			}
		}
		rm := make([]float64, bs*bs)
		cayley(q, bs, rm)
		var worst float64
		for i := 0; i < bs; i++ {
			for j := 0; j < bs; j++ {
				var s float64
				for p := 0; p < bs; p++ {
					s += rm[p*bs+i] * rm[p*bs+j]
				}
				if i == j {
					s--
				}
				worst = math.Max(worst, math.Abs(s))
			}
		}
		if worst > 1e-9 {
			t.Errorf("bs %d: |RᵀR − I| = %g", bs, worst)
		}
	}
}

// TestInpaintConvInPadded: a 4-channel conv_in LoRA on a 9-channel
// inpainting checkpoint patches the first 4 input channels only.
func TestInpaintConvInPadded(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	w := randn(r, 8*9*9, 1)
	ckpt := newMem().put(UNetPrefix+"input_blocks.0.0.weight", w, 8, 9, 3, 3)
	mod := "diffusion_model.input_blocks.0.0"
	down, up := randn(r, 2*4*9, 1), randn(r, 8*2, 1)
	src := newMem().put(mod+".lora_down.weight", down, 2, 4, 3, 3).put(mod+".lora_up.weight", up, 8, 2, 1, 1)
	p, err := NewPlan(ckpt, []Adapter{{File: parse(t, src, nil), UNet: 0.5}})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]float32, len(w))
	if err := p.Apply(UNetPrefix+"input_blocks.0.0.weight", w, got); err != nil {
		t.Fatal(err)
	}
	delta := refMatmul(up, down, 8, 2, 36) // [8, 4*9]
	want := f64(w)
	for o := 0; o < 8; o++ {
		for c := 0; c < 4; c++ {
			for s := 0; s < 9; s++ {
				want[(o*9+c)*9+s] += 0.5 * delta[o*36+c*9+s]
			}
		}
	}
	check(t, got, want)
	// A 5-channel delta is still a shape error.
	src = newMem().put(mod+".lora_down.weight", nil, 2, 5, 3, 3).put(mod+".lora_up.weight", nil, 8, 2, 1, 1)
	if _, err := NewPlan(ckpt, []Adapter{{File: parse(t, src, nil), UNet: 1}}); err == nil {
		t.Error("a 5-channel conv_in delta was accepted")
	}
}
