// bench_lora.go: the "lora-swap" part of 'sdbridge bench': replacing one
// rank-32 LoRA by another on a patchable pipeline through the LoRA plugin
// process (restore the touched weights, patch them with the new factors;
// on a GPU then the re-upload of the patched weights, Loaded.UseLoRAs),
// on every attention projection of the U-Net and the text encoder's
// q/k/v/out. Its files (a random checkpoint of the layout, two LoRAs, a
// small CLIP vocabulary) are written to a temporary folder first, which
// load_s includes (the SD1.5 checkpoint is about 2 GB). Host clock: the
// plugin round trip is part of the figure.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/safetensors"
)

// benchLoRARank is the rank of the swapped LoRAs (the baseline).
const benchLoRARank = 32

func benchLoRASwap(b *bench) (res benchResult, err error) {
	t0 := time.Now()
	dir, err := os.MkdirTemp("", "sdbridge-bench-lora-")
	if err != nil {
		return benchResult{}, err
	}
	defer os.RemoveAll(dir)
	vocab, merges := filepath.Join(dir, "vocab.json"), filepath.Join(dir, "merges.txt")
	if _, err := writeDemoTokenizer(vocab, merges); err != nil {
		return benchResult{}, err
	}
	ckpt := filepath.Join(dir, "ckpt.safetensors")
	if err := models.WriteRandom(ckpt, b.layout.Specs(safetensors.F16), 1, nil); err != nil {
		return benchResult{}, err
	}
	loras := make([]string, 2)
	modules := 0
	for i := range loras {
		loras[i] = filepath.Join(dir, fmt.Sprintf("lora-%d.safetensors", i))
		if modules, err = writeDemoLoRA(loras[i], b.layout, benchLoRARank, uint64(11+i)); err != nil {
			return benchResult{}, err
		}
	}
	sup := b.plugins
	if sup == nil {
		if sup, err = host.NewSupervisor(host.Options{LogOutput: os.Stderr}); err != nil {
			return benchResult{}, err
		}
		defer sup.Close() // last: after the pipeline's arenas
	}
	p, err := host.LoadPipeline(ckpt, host.LoadOptions{CLIPVocab: vocab, CLIPMerges: merges, Patchable: true, Device: b.dev})
	if err != nil {
		return benchResult{}, err
	}
	defer func() {
		if cerr := p.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	ctx := context.Background()
	next := 0
	swap := func() error { // the other LoRA replaces the one in place
		next = 1 - next
		return p.UseLoRAs(ctx, sup, []host.LoRASpec{{Path: loras[next], UNet: 1, TE: 1}})
	}
	if err := swap(); err != nil { // the first apply starts the plugin
		return benchResult{}, err
	}
	load := time.Since(t0).Seconds()
	ms, err := timeIt(b.repeat, swap)
	return b.result(fmt.Sprintf("lora swap (rank %d)", benchLoRARank), fmt.Sprintf("%d modules", modules), ms, load, timerHost), err
}
