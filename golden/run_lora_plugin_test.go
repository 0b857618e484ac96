// run_lora_plugin_test.go runs "lora_merge" cases through the real plugin
// path: the checkpoint's U-Net and text-encoder tensors widened to float32
// into shared memfd arenas, the LoRA plugin in its own process (this test
// binary re-executed, TestLoRAPluginHelper), the host's WeightPatch driving
// PlanPatch/PatchWeights, and the merged tensors read back from the arena.
// It also checks that no tensor bytes crossed gRPC.
//
// runLoRAMergePlugin is meant to replace runLoRAMerge in the runner table
// (owned by the lead); TestLoRAMergePlugin runs the lora_merge cases
// through it meanwhile.
package golden

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/plugins/lora"
	"github.com/sdbridge/sdbridge/plugins/sdk"
	"github.com/sdbridge/sdbridge/safetensors"
)

const goldenPluginEnv = "SDBRIDGE_GOLDEN_PLUGIN"

// TestLoRAPluginHelper is the LoRA plugin process (helper-process pattern);
// it skips in a normal test run.
func TestLoRAPluginHelper(t *testing.T) {
	if os.Getenv(goldenPluginEnv) != "lora" {
		t.Skip("helper process for runLoRAMergePlugin")
	}
	lora.Serve()
	os.Exit(0)
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
	su, _, err := c.Input("in.strength_unet")
	if err != nil {
		return nil, err
	}
	st, _, err := c.Input("in.strength_te")
	if err != nil {
		return nil, err
	}
	ckpt, err := safetensors.Open(ckptPath)
	if err != nil {
		return nil, err
	}
	defer ckpt.Close()

	// Model weights in plugin-writable arenas, restorable from the mmap.
	pool := host.NewArenaPool("weights", 64<<20, true)
	defer pool.Close()
	var targets []*host.PatchTarget
	for _, name := range ckpt.Names() {
		if !strings.HasPrefix(name, lora.UNetPrefix) && !strings.HasPrefix(name, lora.TEPrefix) {
			continue
		}
		t, err := ckpt.Get(name)
		if err != nil {
			return nil, err
		}
		if !t.DType.IsFloat() || t.Numel() == 0 {
			continue
		}
		data := pool.AllocFloat32(t.Numel())
		if err := t.Float32Into(data); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		targets = append(targets, &host.PatchTarget{Name: name, Data: data, Shape: t.Shape, Restore: t.Float32Into})
	}
	if err := pool.Err(); err != nil {
		return nil, err
	}
	w, err := host.NewWeightPatch(targets)
	if err != nil {
		return nil, err
	}

	sup, err := host.NewSupervisor(host.Options{LogOutput: io.Discard, CallTimeout: time.Minute})
	if err != nil {
		return nil, err
	}
	defer sup.Close()
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p, err := sup.Register(host.Spec{Name: "lora", Path: exe, Args: []string{"-test.run=^TestLoRAPluginHelper$"},
		Env: []string{goldenPluginEnv + "=lora"}, BuiltIn: true})
	if err != nil {
		return nil, err
	}
	params := sdk.Params{
		{Name: "lora", Value: loraPath},
		{Name: "unet", Value: strconv.FormatFloat(float64(su[0]), 'g', -1, 32)},
		{Name: "te", Value: strconv.FormatFloat(float64(st[0]), 'g', -1, 32)},
	}
	rep, err := w.Apply(context.Background(), p, params)
	if err != nil {
		return nil, err
	}
	if ws := p.WireStats(); ws.SentBytes.Load()+ws.RecvBytes.Load() > 1<<20 {
		return nil, fmt.Errorf("%d bytes crossed gRPC while patching: tensor data leaked into messages", ws.SentBytes.Load()+ws.RecvBytes.Load())
	}
	byName := map[string]*host.PatchTarget{}
	for _, t := range targets {
		byName[t.Name] = t
	}
	res := Result{}
	for _, key := range rep.Touched {
		t := byName[key]
		res["out."+key] = Array{Shape: t.Shape, Data: append([]float32(nil), t.Data...)}
	}
	return res, nil
}

func TestLoRAMergePlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("starts plugin processes")
	}
	root := Dir()
	idx, err := os.ReadFile(filepath.Join(root, "cases", "index.json"))
	if err != nil {
		t.Skipf("golden directory %s: %v", root, err)
	}
	var index struct {
		Cases []string `json:"cases"`
	}
	if err := json.Unmarshal(idx, &index); err != nil {
		t.Fatal(err)
	}
	for _, name := range index.Cases {
		if !strings.HasPrefix(name, "lora_merge") {
			continue
		}
		t.Run(name, func(t *testing.T) {
			c, err := Load(root, name)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got, err := runLoRAMergePlugin(c)
			if err != nil {
				t.Fatal(err)
			}
			rel, err := c.Compare(got)
			fmt.Printf("golden: %s %s rel_l2=%.3g (plugin process) %v\n", name, c.Kind, rel, err)
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
