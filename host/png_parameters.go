// png_parameters.go formats AUTOMATIC1111's infotext (the PNG "parameters"
// chunk) the way A1111's create_infotext does:
//
//	<prompt>
//	Negative prompt: <negative>          (line omitted when empty)
//	Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1,
//	Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, RNG: CPU
//
// on one line, in A1111's field order (Steps, Sampler, Schedule type, CFG
// scale, Seed, Size, Model hash, Model, VAE, Batch size, Batch pos, Clip skip,
// RNG), values containing ',', ':' or a newline JSON-quoted (A1111's
// infotext_utils.quote). Sampler and schedule names are A1111's labels for
// our samplers (see A1111SamplerName). "RNG: CPU" says the noise is torch's
// CPU generator (our "comfy" noise, A1111's "CPU" random source), "RNG: NV"
// the Philox one (A1111's "NV"). The model hash is A1111's AutoV2: the first
// 10 hex digits of the file's SHA-256.
//
// Plugins add A1111's extension fields after RNG (Parameters.Extra), as
// A1111 writes extra_generation_params: LoRAs as `<lora:name:w>` tags
// appended to the prompt plus `Lora hashes: "name: hash"` (LoRAInfotext),
// ControlNet units as `ControlNet 0: "Module: canny, Model: ..."`
// (ControlNetInfotext), ELLA as plain fields. It does not parse infotexts.
package host

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Parameters is the infotext of one image.
type Parameters struct {
	Prompt, Negative    string
	Steps               int
	Sampler, Schedule   string // our names (SamplerNames, ScheduleNames)
	CFG                 float64
	Seed                uint64
	Width, Height       int
	ModelHash           string      // AutoV2 (10 hex digits); "" omits it
	ModelName           string      // file name without extension; "" omits it
	VAEName             string      // a separate VAE file's name; "" omits it
	BatchSize, BatchPos int         // written when BatchSize > 1
	ClipSkip            int         // written when > 1
	NoiseKind           string      // "comfy" -> RNG: CPU, "a1111" -> RNG: NV
	Extra               []InfoField // written after RNG, in order
}

// InfoField is one extra "Key: value" of an infotext; a value holding ',',
// ':' or a newline is quoted when written.
type InfoField struct{ Key, Value string }

// A1111SamplerName is A1111's label for a sampler.
func A1111SamplerName(name string) string {
	switch name {
	case "euler":
		return "Euler"
	case "euler_ancestral", "euler_a":
		return "Euler a"
	case "heun":
		return "Heun"
	case "dpmpp_2m":
		return "DPM++ 2M"
	case "dpmpp_2m_sde":
		return "DPM++ 2M SDE"
	case "ddim":
		return "DDIM"
	case "lms":
		return "LMS"
	}
	return name
}

// A1111ScheduleName is A1111's "Schedule type" label: k-diffusion's
// get_sigmas is A1111's "Uniform".
func A1111ScheduleName(name string) string {
	switch name {
	case "normal":
		return "Uniform"
	case "karras":
		return "Karras"
	case "exponential":
		return "Exponential"
	case "simple":
		return "Simple"
	case "ddim_uniform":
		return "DDIM"
	}
	return name
}

// String formats the infotext.
func (p Parameters) String() string {
	type kv struct{ k, v string }
	fields := []kv{
		{"Steps", strconv.Itoa(p.Steps)},
		{"Sampler", A1111SamplerName(p.Sampler)},
		{"Schedule type", A1111ScheduleName(p.Schedule)},
		{"CFG scale", strconv.FormatFloat(p.CFG, 'f', -1, 64)},
		{"Seed", strconv.FormatUint(p.Seed, 10)},
		{"Size", fmt.Sprintf("%dx%d", p.Width, p.Height)},
		{"Model hash", p.ModelHash},
		{"Model", p.ModelName},
		{"VAE", p.VAEName},
	}
	if p.BatchSize > 1 {
		fields = append(fields, kv{"Batch size", strconv.Itoa(p.BatchSize)}, kv{"Batch pos", strconv.Itoa(p.BatchPos)})
	}
	if p.ClipSkip > 1 {
		fields = append(fields, kv{"Clip skip", strconv.Itoa(p.ClipSkip)})
	}
	switch p.NoiseKind {
	case "comfy", "":
		fields = append(fields, kv{"RNG", "CPU"})
	case "a1111":
		fields = append(fields, kv{"RNG", "NV"})
	}
	for _, f := range p.Extra {
		fields = append(fields, kv{f.Key, f.Value})
	}
	var parts []string
	for _, f := range fields {
		if f.v != "" {
			parts = append(parts, f.k+": "+quoteInfotext(f.v))
		}
	}
	var b strings.Builder
	b.WriteString(p.Prompt)
	if p.Negative != "" {
		b.WriteString("\nNegative prompt: " + p.Negative)
	}
	b.WriteString("\n" + strings.Join(parts, ", "))
	return strings.TrimSpace(b.String())
}

// quoteInfotext is A1111's infotext_utils.quote: JSON-quote (non-ASCII
// kept) a value holding ',', ':' or a newline.
func quoteInfotext(s string) string {
	if !strings.ContainsAny(s, ",:\n") {
		return s
	}
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		return s
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// AutoV2Hash is A1111's short model hash: the first 10 hex digits of the
// SHA-256 of the whole file.
func AutoV2Hash(path string) (string, error) {
	sum, err := sha256Hex(path)
	if err != nil {
		return "", err
	}
	return sum[:10], nil
}

// sha256Hex is the hex SHA-256 of the whole file at path.
func sha256Hex(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return sha256HexFrom(f, path)
}

// sha256HexFrom is the hex SHA-256 of the rest of r; path names it in the
// error.
func sha256HexFrom(r io.Reader, path string) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// LoRAInfotext describes applied LoRAs as A1111 does: tags for the prompt
// (" <lora:name:W>", or " <lora:name:te=T:unet=U>" when the strengths
// differ, plus ":lbw=..." for block weights, the lora-block-weight
// extension's syntax) and the "Lora hashes" field (name: the first 12 hex
// digits of the SHA-256 of the tensor data after the safetensors header,
// A1111's LoRA short hash). name is the file name without extension.
func LoRAInfotext(loras []LoRASpec) (promptTags string, hashes InfoField, err error) {
	f := func(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }
	var tags, hs []string
	for _, l := range loras {
		name := strings.TrimSuffix(filepath.Base(l.Path), filepath.Ext(l.Path))
		tag := "<lora:" + name + ":" + f(l.UNet)
		if l.TE != l.UNet {
			tag = "<lora:" + name + ":te=" + f(l.TE) + ":unet=" + f(l.UNet)
		}
		if len(l.Blocks) > 0 {
			b := make([]string, len(l.Blocks))
			for i, v := range l.Blocks {
				b[i] = f(v)
			}
			tag += ":lbw=" + strings.Join(b, ",")
		}
		tags = append(tags, tag+">")
		h, err := LoRAHash(l.Path)
		if err != nil {
			return "", InfoField{}, err
		}
		hs = append(hs, name+": "+h)
	}
	if len(loras) == 0 {
		return "", InfoField{}, nil
	}
	return " " + strings.Join(tags, " "), InfoField{"Lora hashes", strings.Join(hs, ", ")}, nil
}

// LoRAHash is A1111's short hash of a .safetensors LoRA: the first 12 hex
// digits of the SHA-256 of the file after its 8-byte length and JSON header.
func LoRAHash(path string) (string, error) {
	file, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer file.Close()
	var n [8]byte
	if _, err := io.ReadFull(file, n[:]); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	if _, err := file.Seek(int64(binary.LittleEndian.Uint64(n[:])), io.SeekCurrent); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	sum, err := sha256HexFrom(file, path)
	if err != nil {
		return "", err
	}
	return sum[:12], nil
}

// ControlNetInfo is one ControlNet unit as the infotext records it.
type ControlNetInfo struct {
	Preprocess string // as given: none, canny:100:200, scribble:0.5, ...
	Model      string // file path
	Weight     float64
	Resize     string // resize, crop or pad
	Start, End float64
	Guess      bool
}

// ControlNetInfotext is sd-webui-controlnet's field for unit i:
// ControlNet i: "Module: canny, Model: name, Weight: 1, Resize Mode: Crop
// and Resize, Threshold A: 100, Threshold B: 200, Guidance Start: 0,
// Guidance End: 1, Control Mode: Balanced".
func ControlNetInfotext(i int, u ControlNetInfo) InfoField {
	f := func(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }
	parts := strings.Split(u.Preprocess, ":")
	resize := map[string]string{"resize": "Just Resize", "crop": "Crop and Resize", "pad": "Resize and Fill"}[u.Resize]
	if resize == "" {
		resize = u.Resize
	}
	v := []string{
		"Module: " + parts[0],
		"Model: " + strings.TrimSuffix(filepath.Base(u.Model), filepath.Ext(u.Model)),
		"Weight: " + f(u.Weight),
		"Resize Mode: " + resize,
	}
	for j, name := range []string{"Threshold A", "Threshold B"} {
		if j+1 < len(parts) {
			v = append(v, name+": "+parts[j+1])
		}
	}
	mode := "Balanced"
	if u.Guess {
		mode = "ControlNet is more important"
	}
	v = append(v, "Guidance Start: "+f(u.Start), "Guidance End: "+f(u.End), "Control Mode: "+mode)
	return InfoField{Key: "ControlNet " + strconv.Itoa(i), Value: strings.Join(v, ", ")}
}
