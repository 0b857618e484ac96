// run_lora_plugin_test.go runs "lora_merge" cases through the real plugin
// path: the checkpoint's U-Net and text-encoder tensors widened to float32
// into shared memfd arenas, the LoRA plugin in its own process (this test
// binary re-executed, plugins_test.go), the host's WeightPatch driving
// PlanPatch/PatchWeights, and the merged tensors read back from the arena.
// It also checks that no tensor bytes crossed gRPC, and (TestLoRAPluginSwapBitExact)
// that swaps and restores through the process are bit-exact. It works on the
// checkpoint's tensors directly, not through a loaded pipeline (txt2img
// cases use host.Loaded.ApplyLoRAs).
package golden

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/plugins/lora"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

// loraRig is a checkpoint's U-Net and text-encoder tensors in
// plugin-writable arenas, a WeightPatch over them and a LoRA plugin process.
type loraRig struct {
	ckpt    *safetensors.File
	pool    *host.ArenaPool
	sup     *host.Supervisor
	plugin  *host.Plugin
	patch   *host.WeightPatch
	targets map[string]*host.PatchTarget
}

func (r *loraRig) Close() {
	if r.sup != nil {
		r.sup.Close()
	}
	r.pool.Close()
	r.ckpt.Close()
}

// newLoRARig widens every float U-Net / text-encoder tensor of the
// checkpoint into arenas (restorable from the mmap) and registers the LoRA
// plugin (this test binary re-executed).
func newLoRARig(ckptPath string) (*loraRig, error) {
	ckpt, err := safetensors.Open(ckptPath)
	if err != nil {
		return nil, err
	}
	r := &loraRig{ckpt: ckpt, pool: host.NewArenaPool("weights", 64<<20, true), targets: map[string]*host.PatchTarget{}}
	var targets []*host.PatchTarget
	for _, name := range ckpt.Names() {
		if !strings.HasPrefix(name, lora.UNetPrefix) && !strings.HasPrefix(name, lora.TEPrefix) {
			continue
		}
		t, err := ckpt.Get(name)
		if err != nil {
			r.Close()
			return nil, err
		}
		if !t.DType.IsFloat() || t.Numel() == 0 {
			continue
		}
		data := r.pool.AllocFloat32(t.Numel())
		if err := t.Float32Into(data); err != nil {
			r.Close()
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		pt := &host.PatchTarget{Name: name, Data: data, Shape: t.Shape, Restore: t.Float32Into}
		targets = append(targets, pt)
		r.targets[name] = pt
	}
	if err := r.pool.Err(); err != nil {
		r.Close()
		return nil, err
	}
	if r.patch, err = host.NewWeightPatch(targets); err != nil {
		r.Close()
		return nil, err
	}
	if r.sup, err = host.NewSupervisor(host.Options{LogOutput: io.Discard, CallTimeout: time.Minute}); err != nil {
		r.Close()
		return nil, err
	}
	spec, err := pluginHelperSpec("lora")
	if err == nil {
		r.plugin, err = r.sup.Register(spec)
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func loraParams(path string, unet, te float64) sdk.Params {
	return sdk.Params{
		{Name: "lora", Value: path},
		{Name: "unet", Value: strconv.FormatFloat(unet, 'g', -1, 64)},
		{Name: "te", Value: strconv.FormatFloat(te, 'g', -1, 64)},
	}
}

// runLoRAMergePlugin runs a "lora_merge" case through host + plugin process
// + shared arenas.
func runLoRAMergePlugin(c *Case) (Result, error) {
	ckptPath, err := c.File("checkpoint")
	if err != nil {
		return nil, err
	}
	loraPath, err := c.File("lora")
	if err != nil {
		return nil, err
	}
	su, err := caseScalar(c, "in.strength_unet", 1)
	if err != nil {
		return nil, err
	}
	st, err := caseScalar(c, "in.strength_te", su)
	if err != nil {
		return nil, err
	}
	r, err := newLoRARig(ckptPath)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	rep, err := r.patch.Apply(context.Background(), r.plugin, loraParams(loraPath, su, st))
	if err != nil {
		return nil, err
	}
	if ws := r.plugin.WireStats(); ws.SentBytes.Load()+ws.RecvBytes.Load() > 1<<20 {
		return nil, fmt.Errorf("%d bytes crossed gRPC while patching: tensor data leaked into messages", ws.SentBytes.Load()+ws.RecvBytes.Load())
	}
	res := Result{}
	for _, key := range rep.Touched {
		t := r.targets[key]
		res["out."+key] = Array{Shape: t.Shape, Data: append([]float32(nil), t.Data...)}
	}
	return res, nil
}

// snapshotBits copies every target's float32 bits.
func (r *loraRig) snapshotBits() map[string][]uint32 {
	out := map[string][]uint32{}
	for n, t := range r.targets {
		b := make([]uint32, len(t.Data))
		for i, v := range t.Data {
			b[i] = math.Float32bits(v)
		}
		out[n] = b
	}
	return out
}

// TestLoRAPluginSwapBitExact swaps two real adapters many times through the
// plugin process and checks every state bit for bit, then restores.
func TestLoRAPluginSwapBitExact(t *testing.T) {
	if testing.Short() {
		t.Skip("starts plugin processes")
	}
	root := Dir()
	ckptPath := filepath.Join(root, "models", "sd15-tiny.safetensors")
	if _, err := os.Stat(ckptPath); err != nil {
		t.Skipf("golden models absent: %v", err)
	}
	r, err := newLoRARig(ckptPath)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	orig := r.snapshotBits()
	a := loraParams(filepath.Join(root, "models", "lora-kohya_ldm.safetensors"), 0.8, 0.5)
	b := append(loraParams(filepath.Join(root, "models", "lora-loha.safetensors"), 1, 1),
		loraParams(filepath.Join(root, "models", "lora-peft.safetensors"), 0.7, 0.7)...)
	if _, err := r.patch.Apply(ctx, r.plugin, a); err != nil {
		t.Fatal(err)
	}
	stateA := r.snapshotBits()
	if _, err := r.patch.Apply(ctx, r.plugin, b); err != nil {
		t.Fatal(err)
	}
	stateB := r.snapshotBits()
	if sameBits(stateA, stateB) || sameBits(orig, stateA) {
		t.Fatal("adapters changed nothing")
	}
	for i := range 10 {
		for _, step := range []struct {
			params sdk.Params
			want   map[string][]uint32
		}{{a, stateA}, {b, stateB}} {
			if _, err := r.patch.Apply(ctx, r.plugin, step.params); err != nil {
				t.Fatal(err)
			}
			if !sameBits(step.want, r.snapshotBits()) {
				t.Fatalf("swap round %d: weights differ from the first application", i)
			}
		}
	}
	if err := r.patch.Reset(); err != nil {
		t.Fatal(err)
	}
	if !sameBits(orig, r.snapshotBits()) {
		t.Fatal("restore is not bit-exact")
	}
	// An adapter for another architecture is refused and changes nothing.
	if _, err := r.patch.Apply(ctx, r.plugin, a); err != nil {
		t.Fatal(err)
	}
	bad := loraParams(filepath.Join(root, "models", "sd15-tiny.safetensors"), 1, 1)
	if _, err := r.patch.Apply(ctx, r.plugin, bad); err == nil {
		t.Fatal("a checkpoint accepted as a LoRA")
	}
	if !sameBits(stateA, r.snapshotBits()) {
		t.Fatal("a refused patch changed the weights")
	}
	// An SDXL LoRA (second text encoder) is refused by name, through the process.
	sdxl := filepath.Join(t.TempDir(), "sdxl.safetensors")
	zeros := func(n int) []byte { return make([]byte, 2*n) }
	err = safetensors.WriteFile(sdxl, []safetensors.TensorData{
		{Spec: safetensors.Spec{Name: "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", DType: safetensors.F16, Shape: []int{4, 1280}}, Data: zeros(4 * 1280)},
		{Spec: safetensors.Spec{Name: "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", DType: safetensors.F16, Shape: []int{1280, 4}}, Data: zeros(4 * 1280)},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.patch.Apply(ctx, r.plugin, loraParams(sdxl, 1, 1)); err == nil || !strings.Contains(err.Error(), "SDXL") {
		t.Fatalf("SDXL LoRA: err = %v, want a refusal naming SDXL", err)
	}
	if !sameBits(stateA, r.snapshotBits()) {
		t.Fatal("a refused SDXL patch changed the weights")
	}
}

// sameBits compares snapshots (cmp.Equal is far too slow for millions of values).
func sameBits(a, b map[string][]uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for n, x := range a {
		if !slices.Equal(x, b[n]) {
			return false
		}
	}
	return true
}
