// run_txt2img_ella_test.go is the ELLA part of the "txt2img" runner: the
// ella plugin in its own process (this test binary re-executed,
// TestELLAPluginHelper), driven by host.ELLAConditioner with the case's
// connector, T5 folder and spiece.model, in flexible mode (T5 ids = spiece
// ids + EOS, no padding; the negative prompt through the same path, at the
// same timestep).
//
// For the runner (run_txt2img_test.go, owned by the pipeline): txt2imgELLA
// has the same form as txt2imgControlNet (set the hook on the request, call
// the cleanup after Generate), and runTxt2ImgWith runs a case on a given
// checkpoint with any hooks. TestTxt2ImgELLAPlugin runs txt2img_ella, and
// TestTxt2ImgLoRAControlNetELLA runs txt2img_lora_controlnet_ella with the
// ELLA and ControlNet plugin processes on a checkpoint with the LoRA merged
// in process (a stand-in for the LoRA plugin path, which the runner owns).
package golden

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/ella"
	"github.com/sdbridge/sdbridge/plugins/lora"
	"github.com/sdbridge/sdbridge/safetensors"
)

// TestELLAPluginHelper is the ELLA plugin process (helper-process pattern);
// it skips in a normal test run.
func TestELLAPluginHelper(t *testing.T) {
	if os.Getenv(goldenPluginEnv) != "ella" {
		t.Skip("helper process for the ELLA txt2img cases")
	}
	ella.Serve()
	os.Exit(0)
}

// The ELLA plugin process is shared by every case of a test run.
var (
	ellaOnce   sync.Once
	ellaPlugin *host.Plugin
	ellaErr    error
)

// ellaPluginProcess returns the ella plugin: this test binary re-run as
// TestELLAPluginHelper under a supervisor of its own.
func ellaPluginProcess() (*host.Plugin, error) {
	ellaOnce.Do(func() {
		exe, err := os.Executable()
		if err != nil {
			ellaErr = err
			return
		}
		sup, err := host.NewSupervisor(host.Options{LogOutput: io.Discard, CallTimeout: 5 * time.Minute})
		if err != nil {
			ellaErr = err
			return
		}
		ellaPlugin, ellaErr = sup.Register(host.Spec{Name: "ella", Path: exe, Args: []string{"-test.run=^TestELLAPluginHelper$"},
			Env: []string{goldenPluginEnv + "=ella"}, BuiltIn: true})
	})
	return ellaPlugin, ellaErr
}

// txt2imgELLA sets req.Conditioner to the ELLA conditioner of a txt2img
// case with an "ella" file (flexible mode, the case's T5 folder and
// spiece.model, config.ella.heads), for a generation on p: prompt and
// req.Negative are encoded once by the plugin here. Call the returned
// cleanup after Generate.
func txt2imgELLA(c *Case, p *host.Loaded, req *host.Request) (cleanup func(), err error) {
	files := map[string]string{}
	for _, role := range []string{"ella", "t5", "t5_spiece"} {
		path, err := c.File(role)
		if err != nil {
			return nil, err
		}
		files[role] = path
	}
	var ec struct {
		Heads int `json:"heads"`
	}
	if err := c.ConfigInto("ella", &ec); err != nil {
		return nil, err
	}
	unet, ok := p.UNet.(*models.UNet)
	if !ok {
		return nil, fmt.Errorf("txt2img ella: pipeline U-Net is %T, want *models.UNet", p.UNet)
	}
	plug, err := ellaPluginProcess()
	if err != nil {
		return nil, fmt.Errorf("ella plugin: %w", err)
	}
	cond, err := host.NewELLAConditioner(context.Background(), plug, host.ELLAOptions{
		ELLA: files["ella"], T5: files["t5"], T5Tokenizer: files["t5_spiece"],
		Mode: host.ELLAFlexible, Heads: ec.Heads, ContextDim: unet.Config.ContextDim,
	}, req.Prompt, req.Negative)
	if err != nil {
		return nil, err
	}
	req.Conditioner = cond
	return func() { cond.Close() }, nil
}

// txt2imgHook installs one plugin's hook on a request (txt2imgELLA,
// txt2imgControlNet); the cleanup runs after Generate.
type txt2imgHook func(c *Case, p *host.Loaded, req *host.Request) (cleanup func(), err error)

// runTxt2ImgELLA runs a txt2img case whose only plugin is ELLA.
func runTxt2ImgELLA(c *Case) (Result, error) {
	for _, role := range []string{"lora", "controlnet"} {
		if _, ok := c.FilesRel[role]; ok {
			return nil, ErrUnsupported
		}
	}
	ckpt, err := c.File("checkpoint")
	if err != nil {
		return nil, err
	}
	return runTxt2ImgWith(c, ckpt, txt2imgELLA)
}

// runTxt2ImgWith runs a txt2img case on checkpoint with the given hooks, as
// runTxt2Img runs a plain one (reference prompt mode, the case's noise).
func runTxt2ImgWith(c *Case, checkpoint string, hooks ...txt2imgHook) (Result, error) {
	var pc txt2imgConfig
	if err := c.ConfigInto("pipeline", &pc); err != nil {
		return nil, err
	}
	paths := map[string]string{}
	for _, role := range []string{"clip_vocab", "clip_merges"} {
		p, err := c.File(role)
		if err != nil {
			return nil, err
		}
		paths[role] = p
	}
	p, err := host.LoadPipeline(checkpoint, host.LoadOptions{
		CLIPVocab: paths["clip_vocab"], CLIPMerges: paths["clip_merges"], PromptMode: host.PromptTruncate,
	})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	noise, err := caseTensor(c, "in.noise")
	if err != nil {
		return nil, err
	}
	var steps []*nn.Tensor
	for i := 0; c.HasInput(fmt.Sprintf("in.step_noise.%d", i)); i++ {
		t, err := caseTensor(c, fmt.Sprintf("in.step_noise.%d", i))
		if err != nil {
			return nil, err
		}
		steps = append(steps, t)
	}
	req := host.Request{
		Prompt: pc.Prompt, Negative: pc.Negative,
		Steps: pc.Steps, CFG: pc.CFG, Sampler: pc.Sampler, Schedule: pc.Schedule,
		Width: pc.Width, Height: pc.Height, Batch: noise.Shape[0],
		InitialNoise: noise, StepNoise: &host.ListNoise{List: steps},
	}
	for _, hook := range hooks {
		cleanup, err := hook(c, p, &req)
		if err != nil {
			return nil, err
		}
		defer cleanup()
	}
	res, err := p.Generate(context.Background(), req)
	if err != nil {
		return nil, err
	}
	if cond, ok := req.Conditioner.(*host.ELLAConditioner); ok && cond.Stats().Calls == 0 {
		return nil, errors.New("golden: the ELLA conditioner was never called")
	}
	sigmas := make([]float32, len(res.Sigmas))
	for i, s := range res.Sigmas {
		sigmas[i] = float32(s)
	}
	return Result{
		"out.sigmas": {Shape: []int{len(sigmas)}, Data: sigmas},
		"out.latent": {Shape: res.Latent.Shape, Data: res.Latent.Data},
		"out.image":  {Shape: res.Image.Shape, Data: res.Image.Data},
	}, nil
}

func TestTxt2ImgELLAPlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("starts plugin processes")
	}
	c, err := Load(Dir(), "txt2img_ella")
	if err != nil {
		t.Skipf("golden case txt2img_ella: %v", err)
	}
	defer c.Close()
	got, err := runTxt2ImgELLA(c)
	if err != nil {
		t.Fatal(err)
	}
	rel, err := c.Compare(got)
	fmt.Printf("golden: %s %s rel_l2=%.3g (plugin process) %v\n", c.Name, c.Kind, rel, err)
	if err != nil {
		t.Fatal(err)
	}
}

// mergedLoRACheckpoint writes the case's checkpoint with its LoRA merged
// into the U-Net at in.strength_unet (the text encoder is unused under
// ELLA) to a temporary file, in process. It stands in for the LoRA plugin
// path until the txt2img runner applies LoRAs itself.
func mergedLoRACheckpoint(c *Case, dir string) (string, error) {
	ckptPath, err := c.File("checkpoint")
	if err != nil {
		return "", err
	}
	loraPath, err := c.File("lora")
	if err != nil {
		return "", err
	}
	su, _, err := c.Input("in.strength_unet")
	if err != nil {
		return "", err
	}
	ckpt, err := safetensors.Open(ckptPath)
	if err != nil {
		return "", err
	}
	defer ckpt.Close()
	f, err := lora.Load(loraPath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	plan, err := lora.NewPlan(ckpt, []lora.Adapter{{File: f, UNet: float64(su[0])}})
	if err != nil {
		return "", err
	}
	touched := map[string]bool{}
	for _, k := range plan.Keys() {
		touched[k] = true
	}
	var out []safetensors.TensorData
	for _, name := range ckpt.Names() {
		t, err := ckpt.Get(name)
		if err != nil {
			return "", err
		}
		if !touched[name] {
			out = append(out, safetensors.TensorData{Spec: safetensors.Spec{Name: name, DType: t.DType, Shape: t.Shape}, Data: t.Data})
			continue
		}
		orig, err := t.Float32()
		if err != nil {
			return "", err
		}
		dst := make([]float32, len(orig))
		if err := plan.Apply(name, orig, dst); err != nil {
			return "", fmt.Errorf("%s: %w", name, err)
		}
		raw := unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), 4*len(dst))
		out = append(out, safetensors.TensorData{Spec: safetensors.Spec{Name: name, DType: safetensors.F32, Shape: t.Shape}, Data: raw})
	}
	path := filepath.Join(dir, "merged.safetensors")
	if err := safetensors.WriteFile(path, out, nil); err != nil {
		return "", err
	}
	return path, nil
}

// TestTxt2ImgLoRAControlNetELLA runs txt2img_lora_controlnet_ella with the
// ELLA and ControlNet plugin processes (ControlNet receives the ELLA
// context, as the U-Net does) on a checkpoint with the LoRA merged in.
func TestTxt2ImgLoRAControlNetELLA(t *testing.T) {
	if testing.Short() {
		t.Skip("starts plugin processes")
	}
	c, err := Load(Dir(), "txt2img_lora_controlnet_ella")
	if err != nil {
		t.Skipf("golden case txt2img_lora_controlnet_ella: %v", err)
	}
	defer c.Close()
	merged, err := mergedLoRACheckpoint(c, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	got, err := runTxt2ImgWith(c, merged, txt2imgControlNet, txt2imgELLA)
	if err != nil {
		t.Fatal(err)
	}
	rel, err := c.Compare(got)
	fmt.Printf("golden: %s %s rel_l2=%.3g (ella + controlnet plugin processes, LoRA merged in process) %v\n", c.Name, c.Kind, rel, err)
	if err != nil {
		t.Fatal(err)
	}
}
