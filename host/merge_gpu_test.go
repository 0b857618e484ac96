// merge_gpu_test.go: 'merge --device cuda' on the five golden LoRA merge
// cases (LoRA/LoCon in two namings, LoHa, LoKr, PEFT), against the
// stand-in CUDA libraries and their CUDA C emulator in a child process:
// every touched tensor equals the CPU merge (rel L2 <= 1e-6) and the case's
// reference (rel L2 <= 1e-5, the fp32 tolerance of TestMergeGolden).
package host

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

func TestMergeGoldenGPU(t *testing.T) {
	ckptPath := mergeGolden(t, "models/sd15-tiny.safetensors")
	if !cudatest.InChild() {
		cudatest.RunChild(t, "TestMergeGoldenGPU", cudatest.Build(t))
		return
	}
	g, err := nn.OpenGPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for _, name := range []string{"kohya_diffusers", "kohya_ldm", "loha", "lokr", "peft"} {
		t.Run(name, func(t *testing.T) {
			io, err := safetensors.Open(mergeGolden(t, "cases/lora_merge_"+name+"/io.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer io.Close()
			scalar := func(n string) float64 {
				tt, err := io.Get(n)
				if err != nil {
					t.Fatal(err)
				}
				v, err := tt.Float32()
				if err != nil {
					t.Fatal(err)
				}
				return float64(v[0])
			}
			loras := []MergeLoRA{{Path: mergeGolden(t, "models/lora-"+name+".safetensors"), UNet: scalar("in.strength_unet"), TE: scalar("in.strength_te")}}
			dir := t.TempDir()
			outs := map[bool]string{}
			for _, onGPU := range []bool{false, true} {
				opts := MergeOptions{Model: ckptPath, Out: filepath.Join(dir, map[bool]string{false: "cpu", true: "gpu"}[onGPU]+".safetensors"), DType: "fp32", LoRAs: loras, Workers: 2}
				if onGPU {
					opts.GPU = g
				}
				if _, err := Merge(context.Background(), opts); err != nil {
					t.Fatalf("gpu %v: %v", onGPU, err)
				}
				outs[onGPU] = opts.Out
			}
			cpu, err := safetensors.Open(outs[false])
			if err != nil {
				t.Fatal(err)
			}
			defer cpu.Close()
			gpu, err := safetensors.Open(outs[true])
			if err != nil {
				t.Fatal(err)
			}
			defer gpu.Close()
			touched := 0
			for _, n := range io.Names() {
				key, ok := strings.CutPrefix(n, "out.")
				if !ok {
					continue
				}
				touched++
				ref, _ := io.Get(n)
				want, _ := ref.Float32()
				ct, _ := cpu.Get(key)
				c, _ := ct.Float32()
				gt, err := gpu.Get(key)
				if err != nil {
					t.Fatal(err)
				}
				have, err := gt.Float32()
				if err != nil {
					t.Fatal(err)
				}
				if r := nn.RelL2(have, c); r > 1e-6 {
					t.Errorf("%s: GPU vs CPU merge rel L2 %.3g > 1e-6", key, r)
				}
				if r := nn.RelL2(have, want); r > 1e-5 {
					t.Errorf("%s: GPU merge vs reference rel L2 %.3g > 1e-5", key, r)
				}
			}
			if touched == 0 {
				t.Fatal("the case lists no merged tensor")
			}
		})
	}
}
