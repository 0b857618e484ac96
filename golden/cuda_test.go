// cuda_test.go runs the golden cases with SDBRIDGE_DEVICE=cuda on a machine
// without a GPU: TestGolden in a child process against the stand-in CUDA
// libraries of package cudatest, whose NVRTC compiles the embedded CUDA C
// kernels for a CPU emulator. It checks that every kind with a GPU runner
// ran on the "GPU" and passed at the device tolerance, so the GPU models,
// the kernels and the wiring are checked end to end before a real device
// run. The emulator runs a tiny U-Net forward in seconds, so by default
// only two txt2img cases run (quickTxt2Img: the CLIP path, and LoRA +
// ControlNet + ELLA together) with every case of the other kinds, in f16;
// SDBRIDGE_CUDA_SLOW_TESTS=1 runs every case in f16 and in f32 (the cases'
// own tolerances). Skipped under -short and where no C/C++ compiler is
// found.
package golden

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
)

// goldenLine matches one case line of TestGolden's report.
var goldenLine = regexp.MustCompile(`(?m)^golden: (\S+) (\S+) rel_l2=(\S+) (\S+)(.*)$`)

func TestGoldenCUDA(t *testing.T) {
	if cudatest.InChild() {
		t.Skip("in the child")
	}
	if testing.Short() {
		t.Skip("-short: the emulated GPU golden run takes about a minute")
	}
	env := cudatest.Build(t)
	dtypes := []string{"f16"}
	if os.Getenv("SDBRIDGE_CUDA_SLOW_TESTS") != "" {
		dtypes = append(dtypes, "f32")
	} else {
		names, err := quickCases(Dir())
		if err != nil {
			t.Skipf("golden cases not available: %v", err)
		}
		env = append(env, "SDBRIDGE_GOLDEN_CASES="+strings.Join(names, ","))
	}
	for _, dt := range dtypes {
		t.Run(dt, func(t *testing.T) {
			t0 := time.Now()
			out := cudatest.RunChild(t, "TestGolden", append(slices.Clone(env), "SDBRIDGE_DEVICE=cuda", "SDBRIDGE_CUDA_DTYPE="+dt))
			t.Logf("emulated golden run (%s) took %.1fs", dt, time.Since(t0).Seconds())
			if err := checkGPULines(out, dt); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			for _, m := range goldenLine.FindAllString(out, -1) {
				t.Log(m)
			}
		})
	}
}

// quickTxt2Img are the txt2img cases of the default emulated run.
var quickTxt2Img = map[string]bool{"txt2img_dpmpp_2m_karras": true, "txt2img_lora_controlnet_ella": true}

// quickCases lists the cases of the default emulated run: every case
// except the txt2img ones not in quickTxt2Img.
func quickCases(root string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(root, "cases", "index.json"))
	if err != nil {
		return nil, err
	}
	var index struct {
		Cases []string `json:"cases"`
	}
	if err := json.Unmarshal(b, &index); err != nil {
		return nil, err
	}
	var names []string
	for _, n := range index.Cases {
		c, err := Load(root, n)
		if err != nil {
			return nil, err
		}
		if c.Kind != "txt2img" || quickTxt2Img[n] {
			names = append(names, n)
		}
		c.Close()
	}
	return names, nil
}

// checkGPULines checks a TestGolden report of a GPU run: every case ok,
// every kind of gpuRunners seen at least once and always on the GPU in
// dtype dt, every other kind marked as run on the CPU.
func checkGPULines(out, dt string) error {
	seen := map[string]bool{}
	var errs []string
	for _, m := range goldenLine.FindAllStringSubmatch(out, -1) {
		name, kind, status, where := m[1], m[2], m[4], strings.TrimSpace(m[5])
		if status != "ok" {
			errs = append(errs, fmt.Sprintf("%s: %s", name, status))
		}
		if _, ok := runners[kind]; !ok {
			continue // tokenizer corpora: no model, no device
		}
		_, hasGPU := gpuRunners[kind]
		onGPU := strings.HasPrefix(where, "device=cuda/"+dt+" ")
		switch {
		case hasGPU && !onGPU:
			errs = append(errs, fmt.Sprintf("%s (%s) has a GPU runner but ran %q", name, kind, where))
		case !hasGPU && !strings.HasPrefix(where, "device=cpu"):
			errs = append(errs, fmt.Sprintf("%s (%s) has no GPU runner but its line says %q", name, kind, where))
		}
		seen[kind] = true
	}
	for _, k := range slices.Sorted(maps.Keys(gpuRunners)) {
		if !seen[k] {
			errs = append(errs, fmt.Sprintf("no %s case ran", k))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("emulated GPU golden run: %s", strings.Join(errs, "; "))
	}
	return nil
}

func TestCheckGPULines(t *testing.T) {
	var ok []string
	for _, k := range slices.Sorted(maps.Keys(runners)) {
		where := "device=cpu (no GPU path for " + k + ")"
		if _, g := gpuRunners[k]; g {
			where = "device=cuda/f16 tol=0.01"
		}
		ok = append(ok, fmt.Sprintf("golden: case_%s %s rel_l2=0.001 ok %s", k, k, where))
	}
	ok = append(ok, "golden: clip_tokenize clip_tokenize rel_l2=0 ok")
	good := strings.Join(ok, "\n")
	cpuKind := "" // a kind without a GPU runner, if any
	for _, k := range slices.Sorted(maps.Keys(runners)) {
		if _, g := gpuRunners[k]; !g && cpuKind == "" {
			cpuKind = k
		}
	}
	unmarked := strings.Replace(good, "ok device=cpu (no GPU path for "+cpuKind+")", "ok", 1)
	for _, tc := range []struct {
		name, out, dt string
		wantErr       string
	}{
		{"all ok", good, "f16", ""},
		{"wrong dtype", good, "f32", "has a GPU runner but ran"},
		{"failed case", strings.Replace(good, "rel_l2=0.001 ok device=cuda", "rel_l2=0.5 FAIL device=cuda", 1), "f16", "FAIL"},
		{"gpu kind on cpu", strings.Replace(good, "case_unet unet rel_l2=0.001 ok device=cuda/f16 tol=0.01", "case_unet unet rel_l2=0.001 ok device=cpu (no GPU path for unet)", 1), "f16", "unet) has a GPU runner"},
		{"kind missing", strings.Replace(good, "golden: case_ella ella", "golden: case_ella other", 1), "f16", "no ella case ran"},
		{"cpu kind unmarked", unmarked, "f16", "has no GPU runner"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "cpu kind unmarked" && cpuKind == "" {
				t.Skip("every kind has a GPU runner")
			}
			err := checkGPULines(tc.out, tc.dt)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
