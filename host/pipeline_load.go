// pipeline_load.go builds a Pipeline from a single-file SD1.x checkpoint:
// U-Net, VAE decoder (from the checkpoint or a separate --vae file), CLIP
// text encoder and tokenizer, and the noise schedule (the checkpoint's
// alphas_cumprod when stored, else SD1.5's). It refuses SDXL and other
// non-SD1 checkpoints by name and says how to supply a missing VAE. With
// LoadOptions.Patchable the U-Net and text encoder are bound into shared
// arenas for LoRA patching (modelstore.go). With LoadOptions.Device on a
// GPU the U-Net, VAE decoder and text encoder then run as their CUDA types
// (pipeline_device.go). It does not apply LoRAs or start plugins.
package host

import (
	"errors"
	"fmt"
	"io"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/safetensors"
	"github.com/sdbridge/sdbridge/tokenizer"
)

// LoadOptions says where the parts that a checkpoint may lack come from.
type LoadOptions struct {
	VAEPath string // a separate VAE file; "" uses the checkpoint's
	// CLIPVocab and CLIPMerges name the tokenizer files directly; else
	// CLIPTokenizerDir (--clip-tokenizer) and the places FindCLIPTokenizer
	// searches.
	CLIPVocab, CLIPMerges string
	CLIPTokenizerDir      string
	ClipSkip              int
	PromptMode            PromptMode
	// Patchable binds the U-Net and CLIP text-encoder weights into
	// plugin-writable shared arenas and keeps the checkpoint mapped (the
	// restore source), so Loaded.ApplyLoRAs can patch them in place. The
	// VAE stays in private memory.
	Patchable bool
	// Device is where the U-Net, VAE decoder and text encoder compute
	// (nil: the CPU). The caller opens it and closes it after Loaded.Close.
	Device *Device
}

// Loaded is a loaded Pipeline. The models widen every weight into their own
// memory at bind time, so LoadPipeline unmaps the files once the models are
// bound (about 2 GB less resident memory for an fp16 SD1.5 file), except a
// Patchable checkpoint, which stays mapped as the restore source; Close
// releases what is still held.
type Loaded struct {
	*Pipeline
	Tokenizer *tokenizer.CLIP
	// UNetConfig describes the U-Net (plugins check their models against
	// it), whichever device runs it.
	UNetConfig models.UNetConfig
	files      []io.Closer
	store      *modelStore // nil unless Patchable
	device     *onDevice   // nil on the CPU
}

// Close frees the shared weight arenas (after the plugins unmap them) and
// unmaps the model files. Close it before the plugins' Supervisor.
func (l *Loaded) Close() error {
	errs := []error{l.closeDevice()}
	if l.store != nil {
		errs = append(errs, l.store.close())
		l.store = nil
	}
	errs = append(errs, l.closeFiles())
	return errors.Join(errs...)
}

func (l *Loaded) closeFiles() error {
	var errs []error
	for _, f := range l.files {
		errs = append(errs, f.Close())
	}
	l.files = nil
	return errors.Join(errs...)
}

// ErrSDXL marks a checkpoint of the SDXL family, which is not supported.
var ErrSDXL = errors.New("SDXL checkpoints are not supported (only SD 1.x)")

// LoadPipeline loads a checkpoint for txt2img.
func LoadPipeline(checkpoint string, opt LoadOptions) (*Loaded, error) {
	f, err := safetensors.Open(checkpoint)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", checkpoint, err)
	}
	l := &Loaded{Pipeline: &Pipeline{LatentChannels: 4, Downscale: 8}}
	if opt.Patchable {
		// The checkpoint stays mapped as the restore source; store.close unmaps it.
		l.store = &modelStore{pool: NewArenaPool("weights", modelArenaChunk, true), ckpt: f}
	} else {
		l.files = []io.Closer{f}
	}
	err = l.load(checkpoint, f, opt)
	if cerr := l.closeFiles(); err == nil && cerr != nil {
		err = fmt.Errorf("checkpoint %s: %w", checkpoint, cerr)
	}
	if err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func (l *Loaded) load(checkpoint string, f *safetensors.File, opt LoadOptions) error {
	if _, ok := f.Lookup("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"); ok {
		return fmt.Errorf("checkpoint %s: %w (it has SDXL's conditioner.embedders.* text encoders)", checkpoint, ErrSDXL)
	}
	if _, ok := f.Lookup("model.diffusion_model.label_emb.0.0.weight"); ok {
		return fmt.Errorf("checkpoint %s: %w (its U-Net has SDXL's label_emb)", checkpoint, ErrSDXL)
	}
	w, teW := models.NewWeights(f), models.NewWeights(f)
	var unetRec, teRec *recordingSource
	if l.store != nil {
		w, unetRec = l.store.patchableWeights(f)
		teW, teRec = l.store.patchableWeights(f)
	}
	unet, err := models.LoadUNet(w.Sub("model.diffusion_model."))
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", checkpoint, err)
	}
	l.UNet, l.UNetConfig = unet, unet.Config
	l.LatentChannels = unet.Config.InChannels
	if unet.Config.InChannels != 4 {
		return fmt.Errorf("checkpoint %s: U-Net takes %d input channels (an inpainting or instruct model?); txt2img needs 4", checkpoint, unet.Config.InChannels)
	}

	vaeSrc, vaeName := models.Source(f), checkpoint
	if opt.VAEPath != "" {
		vf, err := safetensors.Open(opt.VAEPath)
		if err != nil {
			return fmt.Errorf("vae %s: %w", opt.VAEPath, err)
		}
		l.files = append(l.files, vf)
		vaeSrc, vaeName = vf, opt.VAEPath
	}
	vae, err := models.LoadVAEDecoder(models.NewWeights(vaeSrc), 0)
	if errors.Is(err, models.ErrNoVAE) && opt.VAEPath == "" {
		return fmt.Errorf("checkpoint %s has no VAE (first_stage_model.*): pass a VAE file with --vae FILE (e.g. vae-ft-mse-840000-ema-pruned.safetensors): %w", checkpoint, err)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", vaeName, err)
	}
	l.VAE = vae

	clip, err := models.LoadCLIPText(teW, models.CLIPTextOptions{})
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", checkpoint, err)
	}
	if l.store != nil {
		if err := l.store.seal(unetRec, teRec); err != nil {
			return fmt.Errorf("checkpoint %s: %w", checkpoint, err)
		}
	}
	vocab, merges := opt.CLIPVocab, opt.CLIPMerges
	if vocab == "" || merges == "" {
		if vocab, merges, err = tokenizer.FindCLIPTokenizer(opt.CLIPTokenizerDir, checkpoint); err != nil {
			return err
		}
	}
	if l.Tokenizer, err = tokenizer.LoadCLIP(vocab, merges); err != nil {
		return fmt.Errorf("clip tokenizer: %w", err)
	}
	prompts := &CLIPPrompts{Tokenizer: l.Tokenizer, Model: clip, ClipSkip: opt.ClipSkip, Mode: opt.PromptMode}
	l.Prompts = prompts

	ac := models.SD15AlphasCumprod()
	if t, err := f.Get("alphas_cumprod"); err == nil {
		if ac, err = t.Float32(); err != nil {
			return fmt.Errorf("checkpoint %s: alphas_cumprod: %w", checkpoint, err)
		}
	}
	if l.Schedule, err = NewDiscreteSchedule(ac); err != nil {
		return fmt.Errorf("checkpoint %s: alphas_cumprod: %w", checkpoint, err)
	}
	if err := l.toDevice(opt.Device, unet, vae, clip); err != nil {
		return fmt.Errorf("checkpoint %s: %w", checkpoint, err)
	}
	if l.device != nil {
		l.UNet, l.VAE, prompts.Model = l.device.eps, l.device.dec, l.device.enc
		if err := l.patchOnDevice(); err != nil {
			return fmt.Errorf("checkpoint %s: %w", checkpoint, err)
		}
	}
	return nil
}
