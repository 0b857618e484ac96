// demo_models.go makes the demo's models: a CLIP vocabulary of its own
// (byte-pair merges learned from a few prompts), a tiny SD1.5-structured
// checkpoint with random weights in the real key layout, a kohya LoRA for
// it, a ControlNet, a T5 encoder folder with its own SentencePiece
// vocabulary, an ELLA connector, and a hint image. Nothing is downloaded; the files are small (a few MB).
// The weights are random, so the image is structured noise, not a picture.
package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/plugins/ella"
	"github.com/sdbridge/sdbridge/plugins/lora"
	"github.com/sdbridge/sdbridge/safetensors"
	"github.com/sdbridge/sdbridge/tokenizer"
)

// demoCorpus is what the demo vocabulary is learned from.
const demoCorpus = `a photo of a red fox in a snowy forest at dawn, soft light, detailed fur
a watercolor painting of a lighthouse on a cliff above a stormy sea
a cozy cabin in the mountains under a starry night sky, warm windows
blurry, low quality, watermark, text`

type demoFiles struct {
	Dir, Checkpoint, Vocab, Merges, LoRA, ControlNet string
	ELLA, T5, Hint                                   string
	VocabSize                                        int
}

// trainMerges learns n byte-pair merges from the words of text, the way a
// BPE vocabulary is built: repeatedly merge the most frequent adjacent pair
// (ties broken by the pair's spelling, so the result is deterministic).
func trainMerges(text string, n int) [][2]string {
	counts := map[string]int{}
	for _, w := range strings.FieldsFunc(strings.ToLower(text), func(r rune) bool { return r < 'a' || r > 'z' }) {
		counts[w]++
	}
	words := map[string][]string{}
	for w := range counts {
		var syms []string
		for i, r := range w {
			s := string(r)
			if i == len(w)-1 {
				s += "</w>"
			}
			syms = append(syms, s)
		}
		words[w] = syms
	}
	var merges [][2]string
	for len(merges) < n {
		pairs := map[[2]string]int{}
		for w, syms := range words {
			for i := 0; i+1 < len(syms); i++ {
				pairs[[2]string{syms[i], syms[i+1]}] += counts[w]
			}
		}
		if len(pairs) == 0 {
			break
		}
		var best [2]string
		bestN := 0
		for p, c := range pairs {
			if c > bestN || c == bestN && p[0]+" "+p[1] < best[0]+" "+best[1] {
				best, bestN = p, c
			}
		}
		merges = append(merges, best)
		for w, syms := range words {
			var out []string
			for i := 0; i < len(syms); i++ {
				if i+1 < len(syms) && syms[i] == best[0] && syms[i+1] == best[1] {
					out = append(out, best[0]+best[1])
					i++
					continue
				}
				out = append(out, syms[i])
			}
			words[w] = out
		}
	}
	return merges
}

// writeDemoModels writes every demo file into dir.
func writeDemoModels(dir string) (*demoFiles, error) {
	d := &demoFiles{Dir: dir,
		Checkpoint: filepath.Join(dir, "tiny-sd15.safetensors"),
		Vocab:      filepath.Join(dir, "vocab.json"), Merges: filepath.Join(dir, "merges.txt"),
		LoRA: filepath.Join(dir, "tiny-lora.safetensors"), ControlNet: filepath.Join(dir, "tiny-controlnet.safetensors"),
		ELLA: filepath.Join(dir, "tiny-ella.safetensors"), T5: filepath.Join(dir, "tiny-t5"), Hint: filepath.Join(dir, "hint.png")}
	var err error
	if d.VocabSize, err = writeDemoTokenizer(d.Vocab, d.Merges); err != nil {
		return nil, err
	}
	layout := models.Tiny(d.VocabSize)
	meta := map[string]string{"format": "pt", "sdbridge.demo": "random weights, SD1.5 key layout"}
	if err := models.WriteRandom(d.Checkpoint, layout.Specs(safetensors.F16), 1, meta); err != nil {
		return nil, err
	}
	if err := models.WriteRandom(d.ControlNet, layout.ControlNetSpecs(safetensors.F16, "control_model."), 2, meta); err != nil {
		return nil, err
	}
	if _, err := writeDemoLoRA(d.LoRA, layout, 4, 7); err != nil {
		return nil, err
	}
	t5, err := writeDemoT5(d.T5)
	if err != nil {
		return nil, err
	}
	// The connector maps T5 features (d_model) to the U-Net's context width.
	ellaSpecs := ella.ConnectorSpecs(safetensors.BF16, layout.ContextDim, 96, 32, t5.DModel, 64, 2)
	if err := models.WriteRandom(d.ELLA, ellaSpecs, 3, nil); err != nil {
		return nil, err
	}
	if err := writeDemoHint(d.Hint, 64*4, 64*4); err != nil {
		return nil, err
	}
	return d, nil
}

// writeDemoTokenizer writes a CLIP vocab.json and merges.txt learnt from
// the demo corpus and returns the vocabulary size.
func writeDemoTokenizer(vocabPath, mergesPath string) (int, error) {
	vocab, merges := tokenizer.VocabFromMerges(trainMerges(demoCorpus, 200))
	vb, err := json.Marshal(vocab)
	if err != nil {
		return 0, err
	}
	var mb strings.Builder
	mb.WriteString("#version: 0.2\n")
	for _, m := range merges {
		mb.WriteString(m[0] + " " + m[1] + "\n")
	}
	if err := os.WriteFile(vocabPath, vb, 0o644); err != nil {
		return 0, err
	}
	if err := os.WriteFile(mergesPath, []byte(mb.String()), 0o644); err != nil {
		return 0, err
	}
	return len(vocab), nil
}

// writeDemoT5 writes a tiny T5 v1.1 encoder folder: config.json,
// model.safetensors and a SentencePiece-style tokenizer.json whose pieces
// are the words and letters of the demo corpus.
func writeDemoT5(dir string) (models.T5Config, error) {
	pieces := [][2]any{{"<pad>", 0.0}, {"</s>", 0.0}, {"<unk>", 0.0}, {"\u2581", -2.0}}
	seen := map[string]bool{}
	for _, w := range strings.Fields(strings.ToLower(strings.NewReplacer(",", " ", ".", " ").Replace(demoCorpus))) {
		if !seen[w] {
			seen[w] = true
			pieces = append(pieces, [2]any{"\u2581" + w, -float64(len(w))})
		}
	}
	for c := 'a'; c <= 'z'; c++ {
		pieces = append(pieces, [2]any{string(c), -10.0})
	}
	cfg := models.T5Config{DModel: 64, DKV: 16, DFF: 96, NumHeads: 4, NumLayers: 2, VocabSize: len(pieces),
		NumBuckets: 32, MaxDistance: 128, FeedForwardProj: "gated-gelu", LayerNormEps: 1e-6, ModelType: "t5"}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return cfg, err
	}
	cb, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return cfg, err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cb, 0o644); err != nil {
		return cfg, err
	}
	tok := map[string]any{
		"added_tokens": []map[string]any{
			{"id": 0, "content": "<pad>", "special": true}, {"id": 1, "content": "</s>", "special": true},
			{"id": 2, "content": "<unk>", "special": true}},
		"normalizer":    nil,
		"pre_tokenizer": map[string]any{"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": true},
		"post_processor": map[string]any{"type": "TemplateProcessing",
			"single":         []map[string]any{{"Sequence": map[string]any{"id": "A", "type_id": 0}}, {"SpecialToken": map[string]any{"id": "</s>", "type_id": 0}}},
			"special_tokens": map[string]any{"</s>": map[string]any{"id": "</s>", "ids": []int{1}, "tokens": []string{"</s>"}}}},
		"model": map[string]any{"type": "Unigram", "unk_id": 2, "vocab": pieces, "byte_fallback": false},
	}
	tb, err := json.Marshal(tok)
	if err != nil {
		return cfg, err
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), tb, 0o644); err != nil {
		return cfg, err
	}
	return cfg, models.WriteRandom(filepath.Join(dir, "model.safetensors"), models.T5Specs(cfg, safetensors.F16), 4, map[string]string{"format": "pt"})
}

// writeDemoHint draws the ControlNet hint: a ring and a bar on black, which
// the canny preprocessor turns into edges.
func writeDemoHint(path string, w, h int) error {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	cx, cy, r := float64(w)/2, float64(h)/2, float64(min(w, h))/3
	for y := range h {
		for x := range w {
			d := math.Hypot(float64(x)-cx, float64(y)-cy)
			on := math.Abs(d-r) < float64(w)/24 || y > h*3/4 && y < h*3/4+h/16
			v := uint8(0)
			if on {
				v = 255
			}
			img.SetNRGBA(x, y, color.NRGBA{v, v, v, 255})
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeDemoLoRA writes a kohya LoRA of the given rank (diffusers-style
// names, F32, random factors from seed) on every attention projection of
// the U-Net and the text encoder's q/k/v/out; it returns the number of
// modules.
func writeDemoLoRA(path string, layout models.Layout, rank int, seed uint64) (int, error) {
	var ts []safetensors.TensorData
	random := func(n int, scale float64) []byte {
		b := make([]byte, 0, 4*n)
		for range n {
			seed = seed*6364136223846793005 + 1442695040888963407
			v := (float64(seed>>40)/float64(1<<24)*2 - 1) * scale
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(float32(v)))
		}
		return b
	}
	add := func(module string, in, out int) {
		ts = append(ts,
			safetensors.TensorData{Spec: safetensors.Spec{Name: module + ".lora_down.weight", DType: safetensors.F32, Shape: []int{rank, in}}, Data: random(rank*in, 1/math.Sqrt(float64(in)))},
			safetensors.TensorData{Spec: safetensors.Spec{Name: module + ".lora_up.weight", DType: safetensors.F32, Shape: []int{out, rank}}, Data: random(out*rank, 0.5)},
			safetensors.TensorData{Spec: safetensors.Spec{Name: module + ".alpha", DType: safetensors.F32, Shape: []int{}}, Data: binary.LittleEndian.AppendUint32(nil, math.Float32bits(float32(rank)))})
	}
	const unet = "model.diffusion_model."
	for _, s := range layout.Specs(safetensors.F16) {
		if !strings.HasPrefix(s.Name, unet) || !strings.Contains(s.Name, ".attn") || len(s.Shape) != 2 {
			continue
		}
		diff, ok := lora.LDMToDiffusers(strings.TrimPrefix(s.Name, unet))
		if !ok {
			return 0, fmt.Errorf("demo lora: no diffusers name for %s", s.Name)
		}
		add("lora_unet_"+strings.ReplaceAll(strings.TrimSuffix(diff, ".weight"), ".", "_"), s.Shape[1], s.Shape[0])
	}
	for i := range layout.CLIPLayers {
		for _, p := range []string{"q_proj", "k_proj", "v_proj", "out_proj"} {
			add(fmt.Sprintf("lora_te_text_model_encoder_layers_%d_self_attn_%s", i, p), layout.CLIPHidden, layout.CLIPHidden)
		}
	}
	slices.SortFunc(ts, func(a, b safetensors.TensorData) int { return strings.Compare(a.Name, b.Name) })
	meta := map[string]string{"ss_network_module": "networks.lora", "ss_network_dim": fmt.Sprint(rank), "ss_base_model_version": "sd_v1"}
	return len(ts) / 3, safetensors.WriteFile(path, ts, meta)
}
