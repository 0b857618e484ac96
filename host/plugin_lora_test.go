// plugin_lora_test.go: LoRA patch, swap and restore timings through the real
// path (LoRA plugin process, shared arena, fp16 originals in a mapped
// safetensors checkpoint shared read-only with the plugin) on the tensors a
// rank-32 attention LoRA touches in SD1.5: the 192 U-Net transformer modules
// and the 72 text-encoder modules, at real shapes divided in width by
// SDBRIDGE_BENCH_DIV (default 4; 1 = real size, about 2.2 GB of memory and
// a 0.7 GB file). SDBRIDGE_BENCH_ONEPASS=0 withholds the originals from the
// plugin (the host restores, then the plugin patches: two passes).
package host

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

type benchModule struct {
	key, loraName string
	out, in, kk   int // kk: 1 for conv 1x1 stored [out, in, 1, 1], 0 for linear
	bias          bool
}

// sd15AttentionModules lists the modules with real SD1.5 shapes / div.
func sd15AttentionModules(div int) []benchModule {
	ctx, te, teFF := 768/div, 768/div, 3072/div
	var ms []benchModule
	add := func(prefix, loraPrefix, name string, out, in, kk int, bias bool) {
		ms = append(ms, benchModule{key: prefix + name, loraName: loraPrefix + underscore(name), out: out, in: in, kk: kk, bias: bias})
	}
	blocks := []struct {
		name string
		c    int
	}{
		{"input_blocks.1.1", 320}, {"input_blocks.2.1", 320}, {"input_blocks.4.1", 640}, {"input_blocks.5.1", 640},
		{"input_blocks.7.1", 1280}, {"input_blocks.8.1", 1280}, {"middle_block.1", 1280},
		{"output_blocks.3.1", 1280}, {"output_blocks.4.1", 1280}, {"output_blocks.5.1", 1280},
		{"output_blocks.6.1", 640}, {"output_blocks.7.1", 640}, {"output_blocks.8.1", 640},
		{"output_blocks.9.1", 320}, {"output_blocks.10.1", 320}, {"output_blocks.11.1", 320},
	}
	for _, b := range blocks {
		c := b.c / div
		p, lp := "model.diffusion_model."+b.name+".", "lora_unet_"+underscore(b.name)+"_"
		add(p, lp, "proj_in", c, c, 1, true)
		add(p, lp, "proj_out", c, c, 1, true)
		for _, a := range []string{"attn1", "attn2"} {
			kv := c
			if a == "attn2" {
				kv = ctx
			}
			add(p, lp, "transformer_blocks.0."+a+".to_q", c, c, 0, false)
			add(p, lp, "transformer_blocks.0."+a+".to_k", c, kv, 0, false)
			add(p, lp, "transformer_blocks.0."+a+".to_v", c, kv, 0, false)
			add(p, lp, "transformer_blocks.0."+a+".to_out.0", c, c, 0, true)
		}
		add(p, lp, "transformer_blocks.0.ff.net.0.proj", 8*c, c, 0, true)
		add(p, lp, "transformer_blocks.0.ff.net.2", c, 4*c, 0, true)
	}
	for i := range 12 {
		p := fmt.Sprintf("cond_stage_model.transformer.text_model.encoder.layers.%d.", i)
		lp := fmt.Sprintf("lora_te_text_model_encoder_layers_%d_", i)
		for _, n := range []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"} {
			add(p, lp, n, te, te, 0, true)
		}
		add(p, lp, "mlp.fc1", teFF, te, 0, true)
		add(p, lp, "mlp.fc2", te, teFF, 0, true)
	}
	return ms
}

func underscore(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '.' {
			b[i] = '_'
		}
	}
	return string(b)
}

func (m benchModule) shape() []int {
	if m.kk == 1 {
		return []int{m.out, m.in, 1, 1}
	}
	return []int{m.out, m.in}
}

// randF16 returns n fp16 values ~ N(0, std).
func randF16(rng *rand.Rand, n int, std float64) []uint16 {
	out := make([]uint16, n)
	for i := range out {
		out[i] = safetensors.F32ToF16(float32(rng.NormFloat64() * std))
	}
	return out
}

func f16Bytes(v []uint16) []byte {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], x)
	}
	return b
}

// writeBenchLoRA writes a kohya (ldm names) rank-r LoRA over ms.
func writeBenchLoRA(t testing.TB, path string, ms []benchModule, rank int, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	var ts []safetensors.TensorData
	for _, m := range ms {
		down, up := []int{rank, m.in}, []int{m.out, rank}
		if m.kk == 1 {
			down, up = []int{rank, m.in, 1, 1}, []int{m.out, rank, 1, 1}
		}
		ts = append(ts,
			safetensors.TensorData{Spec: safetensors.Spec{Name: m.loraName + ".lora_down.weight", DType: safetensors.F16, Shape: down}, Data: f16Bytes(randF16(rng, sdk.Numel(down), 0.05))},
			safetensors.TensorData{Spec: safetensors.Spec{Name: m.loraName + ".lora_up.weight", DType: safetensors.F16, Shape: up}, Data: f16Bytes(randF16(rng, sdk.Numel(up), 0.05))},
			safetensors.TensorData{Spec: safetensors.Spec{Name: m.loraName + ".alpha", DType: safetensors.F16, Shape: []int{}}, Data: f16Bytes([]uint16{safetensors.F32ToF16(float32(rank) / 2)})},
		)
	}
	if err := safetensors.WriteFile(path, ts, map[string]string{"ss_network_dim": strconv.Itoa(rank)}); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkLoRAPlugin(b *testing.B) {
	if testing.Short() {
		b.Skip("allocates the touched tensors of a model")
	}
	div := 4
	if v, err := strconv.Atoi(os.Getenv("SDBRIDGE_BENCH_DIV")); err == nil && v > 0 {
		div = v
	}
	ms := sd15AttentionModules(div)
	dir := b.TempDir()
	loraA, loraB := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
	writeBenchLoRA(b, loraA, ms, 32, 1)
	writeBenchLoRA(b, loraB, ms, 32, 2)

	pool := NewArenaPool("bench-weights", 256<<20, true)
	defer pool.Close()
	ckpt, orig := writeBenchCheckpoint(b, filepath.Join(dir, "model.safetensors"), ms)
	defer ckpt.Close()
	defer orig.Close()
	onePass := os.Getenv("SDBRIDGE_BENCH_ONEPASS") != "0"
	targets, touchedBytes := benchTargets(b, pool, ckpt, orig, onePass)
	w, err := NewWeightPatch(targets)
	if err != nil {
		b.Fatal(err)
	}
	sup, err := NewSupervisor(Options{LogOutput: io.Discard, CallTimeout: 10 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	defer sup.Close()
	exe, _ := os.Executable()
	p, err := sup.Register(Spec{Name: "lora", Path: exe, Args: []string{"-test.run=^$"}, Env: []string{"SDBRIDGE_TEST_PLUGIN=lora"}, BuiltIn: true})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	pa := sdk.Params{{Name: "lora", Value: loraA}, {Name: "unet", Value: "0.8"}}
	pb := sdk.Params{{Name: "lora", Value: loraB}, {Name: "unet", Value: "0.6"}}
	rep, err := w.Apply(ctx, p, pa) // warm: start, load files, map arenas
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("width/%d: %d tensors (%d in one pass), %.0f M params touched, %d modules", div, len(rep.Touched), rep.OnePass, float64(touchedBytes)/6e6, len(ms))

	b.Run("read-write-once", func(b *testing.B) {
		b.SetBytes(touchedBytes)
		for b.Loop() {
			for _, t := range targets {
				t.Restore(t.Data)
			}
		}
	})
	b.Run("restore", func(b *testing.B) {
		b.SetBytes(touchedBytes)
		for b.Loop() {
			b.StopTimer()
			if _, err := w.Apply(ctx, p, pa); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := w.Reset(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("patch", func(b *testing.B) {
		b.SetBytes(touchedBytes)
		for b.Loop() {
			b.StopTimer()
			w.Reset()
			b.StartTimer()
			if _, err := w.Apply(ctx, p, pa); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("swap", func(b *testing.B) {
		b.SetBytes(touchedBytes)
		st := p.WireStats()
		before := st.SentBytes.Load() + st.RecvBytes.Load()
		i := 0
		for b.Loop() {
			params := pa
			if i%2 == 0 {
				params = pb
			}
			i++
			if _, err := w.Apply(ctx, p, params); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(st.SentBytes.Load()+st.RecvBytes.Load()-before)/float64(i), "grpc-B/op")
	})
}

// writeBenchCheckpoint writes random fp16 weights (and biases) of ms to
// path and maps it, shared with plugins as a CheckpointArena.
func writeBenchCheckpoint(t testing.TB, path string, ms []benchModule) (*safetensors.File, *Arena) {
	rng := rand.New(rand.NewPCG(3, 4))
	var ts []safetensors.TensorData
	for _, m := range ms {
		add := func(name string, shape []int) {
			ts = append(ts, safetensors.TensorData{Spec: safetensors.Spec{Name: name, DType: safetensors.F16, Shape: shape},
				Data: f16Bytes(randF16(rng, sdk.Numel(shape), 0.02))})
		}
		add(m.key+".weight", m.shape())
		if m.bias {
			add(m.key+".bias", []int{m.out})
		}
	}
	if err := safetensors.WriteFile(path, ts, nil); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	a, err := CheckpointArena(f)
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	return f, a
}

// benchTargets allocates every tensor of ckpt as a float32 patch target in
// pool, restored from ckpt, with its Original in orig when onePass. bytes
// is what reading the fp16 originals and writing the float32 weights once
// moves.
func benchTargets(t testing.TB, pool *ArenaPool, ckpt *safetensors.File, orig *Arena, onePass bool) (targets []*PatchTarget, bytes int64) {
	for _, name := range ckpt.Names() {
		st, err := ckpt.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		data := pool.AllocFloat32(st.Numel())
		if err := st.Float32Into(data); err != nil {
			t.Fatal(err)
		}
		pt := &PatchTarget{Name: name, Data: data, Shape: st.Shape, Restore: st.Float32Into}
		if onePass {
			ref, ok := OriginalRef(orig, st)
			if !ok {
				t.Fatalf("%s: no original ref", name)
			}
			pt.Original = &ref
		}
		targets = append(targets, pt)
		bytes += int64(st.Numel()) * 6 // read fp16 + write fp32
	}
	return targets, bytes
}
