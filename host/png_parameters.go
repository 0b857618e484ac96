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
// 10 hex digits of the file's SHA-256. It does not parse infotexts.
package host

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
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
	ModelHash           string // AutoV2 (10 hex digits); "" omits it
	ModelName           string // file name without extension; "" omits it
	VAEName             string // a separate VAE file's name; "" omits it
	BatchSize, BatchPos int    // written when BatchSize > 1
	ClipSkip            int    // written when > 1
	NoiseKind           string // "comfy" -> RNG: CPU, "a1111" -> RNG: NV
}

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
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))[:10], nil
}
