// golden_test.go runs every reference case of the golden directory through
// the real code and prints one line per case. It fails on any case over
// tolerance; a kind whose issue is still open reports "unsupported". With
// SDBRIDGE_DEVICE=cuda the kinds with a GPU path run on the GPU
// (device_test.go) and each line says where the case ran;
// SDBRIDGE_GOLDEN_CASES=a,b runs only the cases named.
package golden

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Runner runs one case and returns what the implementation produced.
type Runner func(c *Case) (Result, error)

// runners wires each case kind to the code that computes it (run_*_test.go).
var runners = map[string]Runner{
	"unet":            runUNet,
	"unet_controlnet": runUNetControlNet,
	"controlnet":      runControlNet,
	"vae_decode":      runVAEDecode,
	"vae_encode":      runVAEEncode,
	"clip_text":       runCLIPText,
	"t5_encoder":      runT5Encoder,
	"ella":            runELLA,
	"lora_merge":      runLoRAMergePlugin,
	"txt2img":         runTxt2Img,
}

// corpora wires tokenizer corpora (cases/<file>) to their checkers; each
// returns how many prompts mismatched out of how many.
var corpora = map[string]func(root, path string) (bad, total int, err error){
	"clip_tokenize.jsonl": checkCLIPTokenize,
	"t5_tokenize.jsonl":   checkT5Tokenize,
}

// caseFilter is the set of case names in $SDBRIDGE_GOLDEN_CASES (comma
// separated), or nil (every case) when it is unset. The tokenizer corpora
// always run.
func caseFilter() map[string]bool {
	v := os.Getenv("SDBRIDGE_GOLDEN_CASES")
	if strings.TrimSpace(v) == "" {
		return nil
	}
	only := map[string]bool{}
	for _, n := range strings.Split(v, ",") {
		if n = strings.TrimSpace(n); n != "" {
			only[n] = true
		}
	}
	return only
}

func TestGolden(t *testing.T) {
	root := Dir()
	idx, err := os.ReadFile(filepath.Join(root, "cases", "index.json"))
	if err != nil {
		t.Fatalf("golden directory %s: %v (set SDBRIDGE_GOLDEN_DIR)", root, err)
	}
	var index struct {
		Cases []string `json:"cases"`
	}
	if err := json.Unmarshal(idx, &index); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	dev, err := goldenDevice()
	if err != nil {
		t.Fatalf("golden device: %v", err)
	}
	var passed, failed, unsupported, onGPU int
	report := func(name, kind string, rel float64, err error, where ...string) {
		status := "ok"
		switch {
		case errors.Is(err, ErrUnsupported):
			status = "unsupported"
			unsupported++
		case err != nil:
			status = "FAIL"
			failed++
			t.Errorf("golden: %s: %v", name, err)
		default:
			passed++
		}
		line := fmt.Sprintf("golden: %s %s rel_l2=%.3g %s", name, kind, rel, status)
		for _, w := range where {
			if w != "" {
				line += " " + w
			}
		}
		fmt.Println(line)
	}
	only := caseFilter()
	for _, name := range index.Cases {
		if only != nil && !only[name] {
			continue
		}
		c, err := Load(root, name)
		if err != nil {
			report(name, "?", 0, err)
			continue
		}
		run, ok := runners[c.Kind]
		if !ok {
			report(name, c.Kind, 0, fmt.Errorf("no runner for kind %q", c.Kind))
			c.Close()
			continue
		}
		got, where, err := runOnDevice(c, dev, run)
		rel := 0.0
		if err == nil {
			rel, err = c.Compare(got)
		}
		if strings.HasPrefix(where, "device=cuda") {
			onGPU++
		}
		report(name, c.Kind, rel, err, where)
		c.Close()
	}
	files, _ := filepath.Glob(filepath.Join(root, "cases", "*_tokenize.jsonl"))
	for _, path := range files {
		base := filepath.Base(path)
		kind := strings.TrimSuffix(base, ".jsonl")
		check, ok := corpora[base]
		if !ok {
			report(base, kind, 0, fmt.Errorf("no checker for corpus %s", base))
			continue
		}
		bad, total, err := check(root, path)
		rel := 0.0
		if total > 0 {
			rel = float64(bad) / float64(total)
		}
		if err == nil && bad > 0 {
			err = fmt.Errorf("%d of %d prompts tokenized differently", bad, total)
		}
		report(kind, kind, rel, err)
	}
	if dev.OnGPU() {
		fmt.Printf("golden: device %s: %d cases on the GPU\n", dev, onGPU)
	}
	fmt.Printf("golden: %d passed, %d failed, %d unsupported\n", passed, failed, unsupported)
}
