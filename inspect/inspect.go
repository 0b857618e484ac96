// Package inspect classifies model files by their tensor names and shapes:
// SD1.5 checkpoints (and which components they hold), SD2/SDXL checkpoints
// (named, so they are not mistaken for SD1.5), LoRA-family files, ControlNets,
// ELLA connectors, T5 encoders and standalone VAEs. It reads headers only
// (no tensor bytes, except a T5 folder's config.json) and never binds weights.
package inspect

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/safetensors"
)

// Kinds a file can be.
const (
	KindCheckpoint = "checkpoint"
	KindLoRA       = "lora"
	KindControlNet = "controlnet"
	KindELLA       = "ella"
	KindT5         = "t5-encoder"
	KindVAE        = "vae"
	KindUNet       = "unet"
	KindUnknown    = "unknown"
)

// Report is what inspect says about one file or folder.
type Report struct {
	Path         string            `json:"path"`
	Kind         string            `json:"kind"`
	Architecture string            `json:"architecture,omitempty"` // "SD1.5", "SD2.x", "SDXL"
	Components   []string          `json:"components,omitempty"`   // unet, vae, text_encoder
	Variant      string            `json:"variant,omitempty"`      // txt2img, inpainting, instruct-pix2pix
	EMA          bool              `json:"ema,omitempty"`          // carries a model_ema copy
	Tensors      int               `json:"tensors"`
	Parameters   int64             `json:"parameters"`
	Bytes        int64             `json:"bytes"`
	DTypes       map[string]int    `json:"dtypes"` // tensors per dtype
	UNet         *UNetInfo         `json:"unet,omitempty"`
	VAE          *VAEInfo          `json:"vae,omitempty"`
	CLIP         *CLIPInfo         `json:"text_encoder,omitempty"`
	LoRA         *LoRAInfo         `json:"lora,omitempty"`
	ControlNet   *ControlInfo      `json:"controlnet,omitempty"`
	ELLA         *ELLAInfo         `json:"ella,omitempty"`
	T5           *T5Info           `json:"t5,omitempty"`
	Metadata     map[string]string `json:"metadata,omitempty"`
	Notes        []string          `json:"notes,omitempty"`
}

// UNetInfo is the U-Net configuration read from shapes.
type UNetInfo struct {
	ModelChannels int   `json:"model_channels"`
	ChannelMult   []int `json:"channel_mult"`
	NumResBlocks  int   `json:"num_res_blocks"`
	ContextDim    int   `json:"context_dim"`
	InChannels    int   `json:"in_channels"`
	Heads         int   `json:"heads"` // from the architecture (SD1.x: 8)
}

// VAEInfo is the VAE configuration read from shapes.
type VAEInfo struct {
	Ch        int   `json:"ch"`
	ChMult    []int `json:"ch_mult"`
	ZChannels int   `json:"z_channels"`
	Encoder   bool  `json:"encoder"`
}

// CLIPInfo is the text encoder configuration read from shapes.
type CLIPInfo struct {
	Hidden int    `json:"hidden"`
	Layers int    `json:"layers"`
	Heads  int    `json:"heads"` // hidden/64 (CLIP heads are 64 wide)
	Vocab  int    `json:"vocab"`
	Layout string `json:"layout"` // ldm or hf
}

// ControlInfo describes a ControlNet.
type ControlInfo struct {
	Form          string `json:"form"` // ldm prefixed, bare, diffusers
	ModelChannels int    `json:"model_channels"`
	ContextDim    int    `json:"context_dim"`
	HintChannels  int    `json:"hint_channels"`
}

// ELLAInfo describes an ELLA connector.
type ELLAInfo struct {
	Width       int `json:"width"`
	InputDim    int `json:"input_dim"`
	Layers      int `json:"layers"`
	NumLatents  int `json:"num_latents"`
	TimeChannel int `json:"time_channel"`
	Heads       int `json:"heads"` // 8: not inferable, from the released architecture
}

// T5Info describes a T5 encoder.
type T5Info struct {
	DModel int `json:"d_model"`
	Heads  int `json:"heads"`
	Layers int `json:"layers"`
	DFF    int `json:"d_ff"`
	DKV    int `json:"d_kv"`
	Vocab  int `json:"vocab"`
}

// header is the index of one safetensors file or a shard set.
type header interface {
	models.Source
}

// Path inspects a .safetensors file, a sharded index, or a folder (a T5 /
// Hugging Face folder with config.json and model weights).
func Path(path string) (*Report, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	if st.IsDir() {
		return folder(path)
	}
	src, closeFn, size, err := open(path)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	defer closeFn()
	r := Classify(src)
	r.Path, r.Bytes = path, size
	if f, ok := src.(*safetensors.File); ok && len(f.Metadata) > 0 {
		r.Metadata = pickMetadata(f.Metadata)
	}
	return r, nil
}

func open(path string) (header, func() error, int64, error) {
	if strings.HasSuffix(path, ".index.json") {
		s, err := safetensors.OpenIndex(path)
		if err != nil {
			return nil, nil, 0, err
		}
		return s, s.Close, 0, nil
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, nil, 0, err
	}
	return f, f.Close, f.Size(), nil
}

func folder(dir string) (*Report, error) {
	for _, name := range []string{"model.safetensors", "model.safetensors.index.json", "diffusion_pytorch_model.safetensors"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			continue
		}
		r, err := Path(p)
		if err != nil {
			return nil, err
		}
		r.Path = dir
		if r.Kind == KindT5 {
			if cfg, err := models.ReadT5Config(dir); err == nil {
				r.T5.Heads, r.T5.DKV = cfg.NumHeads, cfg.DKV
			} else {
				r.Notes = append(r.Notes, "config.json: "+err.Error())
			}
		}
		return r, nil
	}
	return nil, fmt.Errorf("inspect: %s is a folder without model.safetensors (or a sharded index)", dir)
}

// Classify looks at names and shapes and fills a report (no Path/Bytes).
func Classify(src models.Source) *Report {
	names := src.Names()
	r := &Report{Kind: KindUnknown, DTypes: map[string]int{}, Tensors: len(names)}
	for _, n := range names {
		info, _ := src.Lookup(n)
		r.DTypes[string(info.DType)]++
		r.Parameters += int64(info.Numel())
	}
	has := func(k string) bool { _, ok := src.Lookup(k); return ok }
	anyPrefix := func(p string) bool {
		return slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, p) })
	}
	switch {
	case isLoRA(names):
		r.Kind = KindLoRA
		describeLoRA(src, r)
	case anyPrefix("conditioner.embedders.") || has("model.diffusion_model.label_emb.0.0.weight"):
		r.Kind, r.Architecture = KindCheckpoint, "SDXL"
		r.Notes = append(r.Notes, "SDXL checkpoints are not supported (sdbridge runs SD1.5)")
	case anyPrefix("cond_stage_model.model.transformer.") || contextDim(src, "model.diffusion_model.") == 1024:
		r.Kind, r.Architecture = KindCheckpoint, "SD2.x"
		r.Notes = append(r.Notes, "SD2.x checkpoints (OpenCLIP ViT-H text encoder, 1024-wide context) are not supported")
	case anyPrefix("model.diffusion_model.") || anyPrefix("first_stage_model.") || anyPrefix("cond_stage_model."):
		r.Kind, r.Architecture = KindCheckpoint, "SD1.5"
		checkpoint(src, r)
	case has("control_model.zero_convs.0.0.weight") || has("zero_convs.0.0.weight") || has("controlnet_cond_embedding.conv_in.weight"):
		r.Kind = KindControlNet
		controlNet(src, r)
	case has("connector.latents") || has("connector.proj_in.weight"):
		r.Kind = KindELLA
		ella(src, r)
	case anyPrefix("encoder.block.0.layer.0.SelfAttention."):
		r.Kind = KindT5
		t5(src, r)
	case has("encoder.conv_in.weight") || has("decoder.conv_in.weight"):
		r.Kind = KindVAE
		r.VAE = vaeInfo(src, "")
	case has("conv_in.weight") && anyPrefix("down_blocks."):
		r.Kind = KindUNet
		r.Notes = append(r.Notes, "a diffusers U-Net file; sdbridge loads single-file (ldm) checkpoints")
	}
	sort.Strings(r.Components)
	return r
}

func contextDim(src models.Source, p string) int {
	if info, ok := src.Lookup(p + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"); ok && len(info.Shape) == 2 {
		return info.Shape[1]
	}
	return 0
}

func checkpoint(src models.Source, r *Report) {
	names := src.Names()
	count := func(p string) int {
		n := 0
		for _, k := range names {
			if strings.HasPrefix(k, p) {
				n++
			}
		}
		return n
	}
	if count("model.diffusion_model.") > 0 {
		r.Components = append(r.Components, "unet")
		w := models.NewWeights(src).Sub("model.diffusion_model.")
		cfg, err := models.InferUNetConfig(w)
		if err != nil {
			r.Notes = append(r.Notes, "U-Net: "+err.Error())
		}
		r.UNet = &UNetInfo{cfg.ModelChannels, cfg.ChannelMult, cfg.NumResBlocks, cfg.ContextDim, cfg.InChannels, cfg.NumHeads}
		switch cfg.InChannels {
		case 9:
			r.Variant = "inpainting"
		case 8:
			r.Variant = "instruct-pix2pix"
		case 4:
			r.Variant = "txt2img"
		}
	}
	if count("first_stage_model.decoder.") > 0 {
		r.Components = append(r.Components, "vae")
		r.VAE = vaeInfo(src, "first_stage_model.")
	}
	for _, p := range []string{"cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."} {
		if count(p+"encoder.layers.") > 0 || count(p+"embeddings.") > 0 {
			r.Components = append(r.Components, "text_encoder")
			r.CLIP = clipInfo(src, p)
			break
		}
	}
	if count("model_ema.") > 0 {
		r.EMA = true
		r.Notes = append(r.Notes, "carries an EMA copy (model_ema.*); it is ignored")
	}
	if !slices.Contains(r.Components, "vae") {
		r.Notes = append(r.Notes, "no VAE: pass --vae FILE to generate")
	}
}

func dim(src models.Source, key string, i int) int {
	if info, ok := src.Lookup(key); ok && i < len(info.Shape) {
		return info.Shape[i]
	}
	return 0
}

func countIndexed(src models.Source, format string) int {
	n := 0
	for {
		found := false
		for _, k := range src.Names() {
			if strings.HasPrefix(k, fmt.Sprintf(format, n)) {
				found = true
				break
			}
		}
		if !found {
			return n
		}
		n++
	}
}

func vaeInfo(src models.Source, p string) *VAEInfo {
	v := &VAEInfo{Ch: dim(src, p+"decoder.conv_out.weight", 1), ZChannels: dim(src, p+"decoder.conv_in.weight", 1)}
	_, v.Encoder = src.Lookup(p + "encoder.conv_in.weight")
	for l := 0; ; l++ {
		c := dim(src, fmt.Sprintf("%sdecoder.up.%d.block.0.conv1.weight", p, l), 0)
		if c == 0 || v.Ch == 0 {
			break
		}
		v.ChMult = append(v.ChMult, c/v.Ch)
	}
	return v
}

func clipInfo(src models.Source, p string) *CLIPInfo {
	c := &CLIPInfo{Layout: "ldm"}
	if !strings.HasPrefix(p, "cond_stage_model.") {
		c.Layout = "hf"
	}
	c.Vocab = dim(src, p+"embeddings.token_embedding.weight", 0)
	c.Hidden = dim(src, p+"embeddings.token_embedding.weight", 1)
	c.Layers = countIndexed(src, p+"encoder.layers.%d.")
	c.Heads = c.Hidden / 64
	return c
}

func controlNet(src models.Source, r *Report) {
	w, form, err := models.ControlNetWeights(src)
	info := &ControlInfo{Form: string(form)}
	r.ControlNet = info
	if err != nil {
		r.Notes = append(r.Notes, err.Error())
		return
	}
	cfg, err := models.InferControlNetConfig(w)
	if err != nil {
		r.Notes = append(r.Notes, err.Error())
	}
	r.Architecture = "SD1.5"
	if cfg.ContextDim == 2048 {
		r.Architecture = "SDXL"
	} else if cfg.ContextDim == 1024 {
		r.Architecture = "SD2.x"
	}
	info.ModelChannels, info.ContextDim = cfg.ModelChannels, cfg.ContextDim
	info.HintChannels = w.Shape("input_hint_block.0.weight")[1]
}

func ella(src models.Source, r *Report) {
	e := &ELLAInfo{Heads: 8}
	e.NumLatents = dim(src, "connector.latents", 0)
	e.Width = dim(src, "connector.latents", 1)
	e.InputDim = dim(src, "connector.proj_in.weight", 1)
	e.TimeChannel = dim(src, "time_embedding.linear_1.weight", 1)
	e.Layers = countIndexed(src, "connector.perceiver_blocks.%d.")
	r.ELLA = e
	r.Architecture = "SD1.5"
	r.Notes = append(r.Notes, "ELLA heads = 8 (not stored in the file; the released ELLA architecture)")
}

func t5(src models.Source, r *Report) {
	t := &T5Info{}
	t.DModel = dim(src, "encoder.block.0.layer.0.SelfAttention.q.weight", 1)
	t.DFF = dim(src, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight", 0)
	if t.DFF == 0 {
		t.DFF = dim(src, "encoder.block.0.layer.1.DenseReluDense.wi.weight", 0)
	}
	t.Heads = dim(src, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 1)
	t.Layers = countIndexed(src, "encoder.block.%d.")
	t.Vocab = dim(src, "shared.weight", 0)
	if t.Vocab == 0 {
		t.Vocab = dim(src, "encoder.embed_tokens.weight", 0)
	}
	if t.Heads > 0 {
		t.DKV = dim(src, "encoder.block.0.layer.0.SelfAttention.q.weight", 0) / t.Heads
	}
	r.T5 = t
}

func pickMetadata(md map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range md {
		if len(v) > 200 {
			v = v[:200] + "..."
		}
		out[k] = v
	}
	return out
}
