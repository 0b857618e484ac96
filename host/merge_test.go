// merge_test.go checks Merge on the shared golden tiny checkpoint (read at
// test time, skipped when absent): touched tensors against the golden
// lora_merge_kohya_diffusers outputs (fp16 storage and --dtype fp32), untouched
// tensors byte for byte, metadata kept and extended, the output classified as
// an SD1.5 checkpoint; the refusals (other architecture, unmatched keys,
// missing file, overwriting the input) leave no file behind; and the --lora
// spec parser. BenchmarkMerge measures merge throughput on the tiny file.
package host

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sdbridge/sdbridge/inspect"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/lora"
	"github.com/sdbridge/sdbridge/safetensors"
)

// mergeGolden returns a file of the shared golden set or skips the test.
func mergeGolden(t testing.TB, rel string) string {
	t.Helper()
	root := os.Getenv("SDBRIDGE_GOLDEN_DIR")
	if root == "" {
		root = filepath.Join("..", "..", "shared", "golden")
	}
	p := filepath.Join(root, rel)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("golden file %s absent (%v): set SDBRIDGE_GOLDEN_DIR", p, err)
	}
	return p
}

func TestMergeGolden(t *testing.T) {
	ckptPath := mergeGolden(t, "models/sd15-tiny.safetensors")
	loraPath := mergeGolden(t, "models/lora-kohya_diffusers.safetensors")
	io, err := safetensors.Open(mergeGolden(t, "cases/lora_merge_kohya_diffusers/io.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer io.Close()
	scalar := func(name string) float64 {
		tt, err := io.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		v, err := tt.Float32()
		if err != nil {
			t.Fatal(err)
		}
		return float64(v[0])
	}
	unet, te := scalar("in.strength_unet"), scalar("in.strength_te")
	in, err := safetensors.Open(ckptPath)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()

	tests := []struct {
		name  string
		dtype string
		tol   float64 // relative L2 of each touched tensor
	}{
		{"keep fp16", "keep", 1e-3},
		{"fp32", "fp32", 1e-5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "merged.safetensors")
			calls := 0
			st, err := Merge(context.Background(), MergeOptions{
				Model: ckptPath, Out: out, DType: tt.dtype, Workers: 2,
				LoRAs:    []MergeLoRA{{Path: loraPath, UNet: unet, TE: te}},
				Progress: func(MergeProgress) { calls++ },
			})
			if err != nil {
				t.Fatal(err)
			}
			if calls != st.Tensors || st.Tensors != len(in.Tensors) {
				t.Errorf("progress called %d times, %d tensors written, input has %d", calls, st.Tensors, len(in.Tensors))
			}
			got, err := safetensors.Open(out)
			if err != nil {
				t.Fatalf("output does not re-open: %v", err)
			}
			defer got.Close()
			if diff := cmp.Diff(in.Names(), got.Names()); diff != "" {
				t.Errorf("tensor order differs (-want +got):\n%s", diff)
			}
			touched := 0
			for _, name := range in.Names() {
				ti, _ := in.Get(name)
				to, err := got.Get(name)
				if err != nil {
					t.Fatal(err)
				}
				wantDType := ti.DType
				if tt.dtype == "fp32" && ti.DType.IsFloat() {
					wantDType = safetensors.F32
				}
				if to.DType != wantDType || !slicesEqual(to.Shape, ti.Shape) {
					t.Errorf("%s: %s %v, want %s %v", name, to.DType, to.Shape, wantDType, ti.Shape)
					continue
				}
				if exp, err := io.Get("out." + name); err == nil {
					touched++
					want, _ := exp.Float32()
					have, err := to.Float32()
					if err != nil {
						t.Fatal(err)
					}
					if r := nn.RelL2(have, want); r > tt.tol {
						t.Errorf("%s: rel L2 %.3g > %g", name, r, tt.tol)
					}
					if to.DType == safetensors.F16 {
						// Against the reference rounded once to fp16 (spec §10.4: cast
						// once): equal, or one fp16 step off where the float32 merge
						// and the float64 reference straddle a rounding boundary.
						off := 0
						for i, v := range want {
							r := make([]float32, 1)
							safetensors.F16ToF32(r, []uint16{safetensors.F32ToF16(v)})
							if have[i] == r[0] {
								continue
							}
							off++
							if step := max(math.Abs(float64(r[0]))/1024, 1.0/(1<<24)); math.Abs(float64(have[i]-r[0])) > step {
								t.Errorf("%s[%d] = %v, want %v (fp16 of %v) within one fp16 step", name, i, have[i], r[0], v)
								break
							}
						}
						if off*100 > len(want) {
							t.Errorf("%s: %d of %d values differ from the fp16-rounded reference", name, off, len(want))
						}
					}
					continue
				}
				if wantDType == ti.DType {
					if !bytes.Equal(to.Data, ti.Data) {
						t.Errorf("untouched %s changed", name)
					}
					continue
				}
				a, _ := ti.Float32()
				b, _ := to.Float32()
				if !slicesEqual(a, b) {
					t.Errorf("untouched %s changed value on widening", name)
				}
			}
			if touched == 0 || touched != st.Touched {
				t.Errorf("%d touched tensors checked, Merge reports %d", touched, st.Touched)
			}
			for k, v := range in.Metadata {
				if got.Metadata[k] != v {
					t.Errorf("metadata %q = %q, want %q (kept from the input)", k, got.Metadata[k], v)
				}
			}
			var list []MergedLoRA
			if err := json.Unmarshal([]byte(got.Metadata[MergedLoRAsKey]), &list); err != nil {
				t.Fatalf("metadata %s: %v", MergedLoRAsKey, err)
			}
			sum, _ := sha256Hex(loraPath)
			want := []MergedLoRA{{File: filepath.Base(loraPath), SHA256: sum, AutoV2: sum[:10], UNet: unet, TE: te}}
			if diff := cmp.Diff(want, list); diff != "" {
				t.Errorf("merged LoRAs metadata (-want +got):\n%s", diff)
			}
			r, err := inspect.Path(out)
			if err != nil {
				t.Fatal(err)
			}
			if r.Kind != inspect.KindCheckpoint || r.Architecture != "SD1.5" {
				t.Errorf("inspect: kind %q architecture %q, want an SD1.5 checkpoint", r.Kind, r.Architecture)
			}
		})
	}
}

func slicesEqual[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// writeTestLoRA writes a small kohya-named adapter of the given modules
// (rank 2, F32) with input width in and output width out each.
func writeTestLoRA(t *testing.T, path string, modules []string, in, out int) {
	t.Helper()
	var ts []safetensors.TensorData
	f32 := func(n int) []byte { return make([]byte, 4*n) }
	for _, m := range modules {
		ts = append(ts,
			safetensors.TensorData{Spec: safetensors.Spec{Name: m + ".lora_down.weight", DType: safetensors.F32, Shape: []int{2, in}}, Data: f32(2 * in)},
			safetensors.TensorData{Spec: safetensors.Spec{Name: m + ".lora_up.weight", DType: safetensors.F32, Shape: []int{out, 2}}, Data: f32(2 * out)},
		)
	}
	if err := safetensors.WriteFile(path, ts, nil); err != nil {
		t.Fatal(err)
	}
}

func TestMergeRefusals(t *testing.T) {
	ckptPath := mergeGolden(t, "models/sd15-tiny.safetensors")
	good := mergeGolden(t, "models/lora-kohya_diffusers.safetensors")
	dir := t.TempDir()
	sdxl := filepath.Join(dir, "sdxl.safetensors")
	writeTestLoRA(t, sdxl, []string{"lora_te2_text_model_encoder_layers_0_mlp_fc1"}, 1280, 5120)
	unmatched := filepath.Join(dir, "unmatched.safetensors")
	writeTestLoRA(t, unmatched, []string{"lora_unet_no_such_block_proj"}, 32, 32)
	existing := filepath.Join(dir, "existing.safetensors")
	if err := os.WriteFile(existing, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		model  string
		lora   string
		out    string
		dtype  string
		is     error
		substr string
	}{
		{"other architecture", ckptPath, sdxl, "a.safetensors", "", lora.ErrArchitecture, "sdxl.safetensors"},
		{"unmatched keys", ckptPath, unmatched, "b.safetensors", "", lora.ErrUnmatched, "lora_unet_no_such_block_proj"},
		{"missing LoRA", ckptPath, filepath.Join(dir, "missing.safetensors"), "c.safetensors", "", os.ErrNotExist, "missing.safetensors"},
		{"missing model", filepath.Join(dir, "nope.safetensors"), good, "d.safetensors", "", os.ErrNotExist, "nope.safetensors"},
		{"model is a LoRA", good, good, "e.safetensors", "", nil, "not an SD1.5 checkpoint"},
		{"output is the input", ckptPath, good, ckptPath, "", nil, "is the input checkpoint"},
		{"output exists", ckptPath, good, existing, "", nil, "--force"},
		{"bad dtype", ckptPath, good, "f.safetensors", "fp8", nil, "--dtype"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := tt.out
			if out != tt.model && !filepath.IsAbs(out) {
				out = filepath.Join(dir, out)
			}
			_, err := Merge(context.Background(), MergeOptions{Model: tt.model, Out: out, DType: tt.dtype,
				LoRAs: []MergeLoRA{{Path: tt.lora, UNet: 1, TE: 1}}})
			if err == nil {
				t.Fatal("merge succeeded, want an error")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.substr) {
				t.Errorf("error %q does not mention %q", err, tt.substr)
			}
		})
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if diff := cmp.Diff([]string{"existing.safetensors", "sdxl.safetensors", "unmatched.safetensors"}, names); diff != "" {
		t.Errorf("refused merges left files behind (-want +got):\n%s", diff)
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep me" {
		t.Error("a refused merge changed an existing file")
	}
}

// TestMergeCancelled checks a cancelled merge leaves no file behind.
func TestMergeCancelled(t *testing.T) {
	ckptPath := mergeGolden(t, "models/sd15-tiny.safetensors")
	good := mergeGolden(t, "models/lora-kohya_diffusers.safetensors")
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	_, err := Merge(ctx, MergeOptions{Model: ckptPath, Out: filepath.Join(dir, "x.safetensors"),
		LoRAs:    []MergeLoRA{{Path: good, UNet: 1, TE: 1}},
		Progress: func(p MergeProgress) { cancel() }})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("cancelled merge left %d files", len(ents))
	}
}

func TestParseMergeLoRA(t *testing.T) {
	ones := make([]float64, 17)
	for i := range ones {
		ones[i] = 1
	}
	tests := []struct {
		spec    string
		want    MergeLoRA
		wantErr string
	}{
		{spec: "a.safetensors", want: MergeLoRA{Path: "a.safetensors", UNet: 1, TE: 1}},
		{spec: "a.safetensors:0.8", want: MergeLoRA{Path: "a.safetensors", UNet: 0.8, TE: 0.8}},
		{spec: "a.safetensors:0.8:te=0.5", want: MergeLoRA{Path: "a.safetensors", UNet: 0.8, TE: 0.5}},
		{spec: "a.safetensors:te=0:unet=-1", want: MergeLoRA{Path: "a.safetensors", UNet: -1, TE: 0}},
		{spec: "C:/x/a.safetensors:0.5", want: MergeLoRA{Path: "C:/x/a.safetensors", UNet: 0.5, TE: 0.5}},
		{spec: "a.safetensors:1:blocks=ALL", want: MergeLoRA{Path: "a.safetensors", UNet: 1, TE: 1, Blocks: ones}},
		{spec: "a.safetensors:1:blocks=1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
			want: MergeLoRA{Path: "a.safetensors", UNet: 1, TE: 1, Blocks: []float64{1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1}}},
		{spec: "", wantErr: "no file"},
		{spec: ":0.5", wantErr: "no file"},
		{spec: "a.safetensors:1:foo=2", wantErr: "unknown option"},
		{spec: "a.safetensors:1:te=x", wantErr: "not a number"},
		{spec: "a.safetensors:1:te=1:te=2", wantErr: "twice"},
		{spec: "a.safetensors:1:blocks=1,2,3", wantErr: "17"},
		{spec: "a.safetensors:1:blocks=NOPE", wantErr: "preset"},
		{spec: "a.safetensors:NaN:te=1", want: MergeLoRA{Path: "a.safetensors:NaN", UNet: 1, TE: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := ParseMergeLoRA(tt.spec)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzParseMergeLoRA checks the --lora parser never panics and that what it
// accepts has a file and finite strengths.
func FuzzParseMergeLoRA(f *testing.F) {
	for _, s := range []string{"a.safetensors:0.8:te=0.5", "x:1:blocks=ALL", "C:/a:b:0.5:unet=1", ":", "a:te=:blocks=,,"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseMergeLoRA(s)
		if err != nil {
			return
		}
		if l.Path == "" || math.IsNaN(l.UNet) || math.IsNaN(l.TE) || math.IsInf(l.UNet, 0) || math.IsInf(l.TE, 0) {
			t.Errorf("ParseMergeLoRA(%q) = %+v", s, l)
		}
		if l.Blocks != nil && len(l.Blocks) != 17 && len(l.Blocks) != 26 {
			t.Errorf("ParseMergeLoRA(%q): %d block weights", s, len(l.Blocks))
		}
	})
}

// BenchmarkMerge reports merge throughput (output MB/s) on the tiny golden
// checkpoint with one LoRA, writing to a temp folder.
func BenchmarkMerge(b *testing.B) {
	ckptPath := mergeGolden(b, "models/sd15-tiny.safetensors")
	good := mergeGolden(b, "models/lora-kohya_diffusers.safetensors")
	out := filepath.Join(b.TempDir(), "bench.safetensors")
	opts := MergeOptions{Model: ckptPath, Out: out, Force: true, LoRAs: []MergeLoRA{{Path: good, UNet: 0.8, TE: 0.6}}}
	st, err := Merge(context.Background(), opts)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(st.Bytes)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Merge(context.Background(), opts); err != nil {
			b.Fatal(err)
		}
	}
}
