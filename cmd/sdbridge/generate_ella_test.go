// generate_ella_test.go runs the three ELLA modes through the real plugin
// process (TestDPGELLAPluginProcess) on the golden tiny models: flexible
// gives [1, 64, D], fixed differs from it (128 padded tokens), concat is the
// flexible ELLA tokens followed by the checkpoint's CLIP tokens, and each
// mode drives a full one-step generation.
package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/nn"
)

func TestELLAModesEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a plugin process")
	}
	clip := clipDir(t)
	golden := filepath.Dir(filepath.Dir(clip))
	p, err := host.LoadPipeline(filepath.Join(golden, "models", "sd15-tiny.safetensors"), host.LoadOptions{CLIPTokenizerDir: clip})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	sup, err := host.NewSupervisor(host.Options{LogOutput: &bytes.Buffer{}, CallTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer sup.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sup.Register(host.Spec{Name: "ella", Path: exe, Args: []string{"-test.run=^TestDPGELLAPluginProcess$"},
		Env: []string{dpgPluginEnv + "=1"}, BuiltIn: true}); err != nil {
		t.Fatal(err)
	}
	const prompt, negative = "a (red:1.2) cube on a blue sphere", "blurry"
	ctxs := map[string][2]*nn.Tensor{}
	for _, mode := range host.ELLAModes {
		t.Run(mode, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			o := ellaFlags(fs)
			err := fs.Parse([]string{"--ella", filepath.Join(golden, "models", "ella-tiny.safetensors"),
				"--t5", filepath.Join(golden, "models", "t5-tiny"), "--t5-tokenizer", filepath.Join(golden, "data", "t5", "spiece.model"),
				"--ella-mode", mode})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			cond, err := newELLAConditioner(ctx, o, sup, p, prompt, negative)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := cond.Close(); err != nil { // releases handles, unmaps the arena in the plugin
					t.Errorf("close: %v", err)
				}
			}()
			var pair [2]*nn.Tensor
			for i, c := range []bool{false, true} {
				x, err := cond.Context(ctx, 999, c)
				if err != nil {
					t.Fatal(err)
				}
				pair[i] = x.Clone()
			}
			ctxs[mode] = pair
			wantL := 64
			if mode == host.ELLAConcat {
				wantL = 64 + 77
			}
			if pair[1].Shape[1] != wantL || pair[0].Shape[1] != wantL || pair[1].Shape[2] != 128 {
				t.Errorf("contexts %v / %v, want [1, %d, 128]", pair[0].Shape, pair[1].Shape, wantL)
			}
			res, err := p.Generate(ctx, host.Request{Prompt: prompt, Negative: negative, Steps: 1, CFG: 5,
				Sampler: "euler", Schedule: "normal", Width: 64, Height: 64, Seed: 1, Conditioner: cond, SkipDecode: true})
			if err != nil {
				t.Fatal(err)
			}
			if res.Latent.Numel() != 4*8*8 {
				t.Errorf("latent %v", res.Latent.Shape)
			}
		})
	}
	flex, fixed, cat := ctxs[host.ELLAFlexible], ctxs[host.ELLAFixed], ctxs[host.ELLAConcat]
	if flex[1] == nil || fixed[1] == nil || cat[1] == nil {
		t.Fatal("a mode failed")
	}
	if slices.Equal(flex[1].Data, fixed[1].Data) {
		t.Error("fixed mode gave the flexible context")
	}
	for i, name := range []string{"uncond", "cond"} {
		n := 64 * 128
		if !slices.Equal(cat[i].Data[:n], flex[i].Data) {
			t.Errorf("concat %s: the first 64 tokens are not the flexible ELLA tokens", name)
		}
	}
	want, err := p.Prompts.EncodePrompt(context.Background(), prompt) // [1, 77, 128]
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cat[1].Data[64*128:], want.Data) {
		t.Error("concat cond: the last 77 tokens are not the prompt's CLIP context")
	}
}
