// cmd_dpg_test.go checks 'dpg': the grid layout the DPG-Bench scorer crops
// (2x2 for 4 samples), prompt listing, flag validation, and an end-to-end
// run on the golden tiny models with the ELLA plugin in its own process
// (this test binary re-run as TestDPGELLAPluginProcess) that resumes without
// redoing finished prompts.
package main

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdbridge/sdbridge/host"
	"github.com/sdbridge/sdbridge/plugins/ella"
)

const dpgPluginEnv = "SDBRIDGE_TEST_ELLA_PLUGIN"

// TestDPGELLAPluginProcess is the ELLA plugin process of TestDPGEndToEnd.
func TestDPGELLAPluginProcess(t *testing.T) {
	if os.Getenv(dpgPluginEnv) != "1" {
		t.Skip("helper process for TestDPGEndToEnd")
	}
	ella.Serve()
	os.Exit(0)
}

func TestGridShape(t *testing.T) {
	for _, tc := range []struct{ n, cols, rows int }{{1, 1, 1}, {2, 2, 1}, {3, 2, 2}, {4, 2, 2}, {5, 3, 2}, {9, 3, 3}} {
		if c, r := gridShape(tc.n); c != tc.cols || r != tc.rows {
			t.Errorf("gridShape(%d) = %d x %d, want %d x %d", tc.n, c, r, tc.cols, tc.rows)
		}
	}
}

func TestComposeGrid(t *testing.T) {
	var imgs []image.Image
	for k := range 4 {
		img := image.NewNRGBA(image.Rect(0, 0, 8, 8))
		for i := range img.Pix {
			img.Pix[i] = uint8(10 * (k + 1))
		}
		imgs = append(imgs, img)
	}
	g, err := composeGrid(imgs)
	if err != nil {
		t.Fatal(err)
	}
	if g.Bounds().Dx() != 16 || g.Bounds().Dy() != 16 {
		t.Fatalf("grid %v, want 16x16", g.Bounds())
	}
	// The scorer's crops (0,0,R,R), (R,0,2R,R), (0,R,R,2R), (R,R,2R,2R) are samples 0..3.
	for k, p := range []image.Point{{0, 0}, {8, 0}, {0, 8}, {8, 8}} {
		if got := g.NRGBAAt(p.X+3, p.Y+3).R; got != uint8(10*(k+1)) {
			t.Errorf("crop %d holds sample value %d, want %d", k, got, 10*(k+1))
		}
	}
	if _, err := composeGrid([]image.Image{imgs[0], image.NewNRGBA(image.Rect(0, 0, 4, 4))}); err == nil {
		t.Error("images of different sizes were accepted")
	}
}

func TestListDPGPrompts(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{"b.txt": "second\n", "a.txt": " first ", "notes.md": "x"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ps, err := listDPGPrompts(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0] != (dpgPrompt{"a", "first"}) || ps[1] != (dpgPrompt{"b", "second"}) {
		t.Errorf("prompts %v", ps)
	}
	os.WriteFile(filepath.Join(dir, "c.txt"), []byte("  \n"), 0o644)
	if _, err := listDPGPrompts(dir); err == nil || !strings.Contains(err.Error(), "c.txt") {
		t.Errorf("empty prompt file: error %v", err)
	}
}

func TestDPGFlags(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no prompts", []string{"--out", dir, "--model", "m.safetensors"}, "--prompts DIR is required"},
		{"zero per prompt", []string{"--prompts", dir, "--out", dir, "--model", "m", "--per-prompt", "0"}, "--per-prompt 0"},
		{"ella without t5", []string{"--prompts", dir, "--out", dir, "--model", "m", "--ella", "e.safetensors"}, "--ella needs --t5"},
		{"bad ella mode", []string{"--prompts", dir, "--out", dir, "--model", "m", "--ella", dir, "--t5", dir, "--ella-mode", "both"}, "--ella-mode"},
		{"t5 is a file", []string{"--prompts", dir, "--out", dir, "--model", "m", "--ella", "x", "--t5", "/dev/null"}, "not a folder"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			_, err := parseDPGFlags(tc.args, &stderr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestDPGEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a plugin process")
	}
	clip := clipDir(t)
	golden := filepath.Dir(filepath.Dir(clip))
	prompts, out := t.TempDir(), t.TempDir()
	for id, text := range map[string]string{"p1": "a red cube on a blue sphere", "p2": "two cats playing chess in a library"} {
		os.WriteFile(filepath.Join(prompts, id+".txt"), []byte(text), 0o644)
	}
	sup, err := host.NewSupervisor(host.Options{LogOutput: &bytes.Buffer{}, CallTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer sup.Close()
	exe, _ := os.Executable()
	if _, err := sup.Register(host.Spec{Name: "ella", Path: exe, Args: []string{"-test.run=^TestDPGELLAPluginProcess$"},
		Env: []string{dpgPluginEnv + "=1"}, BuiltIn: true}); err != nil {
		t.Fatal(err)
	}
	args := []string{"--prompts", prompts, "--out", out, "--per-prompt", "4", "--resolution", "64", "--steps", "2",
		"--model", filepath.Join(golden, "models", "sd15-tiny.safetensors"), "--clip-tokenizer", clip,
		"--ella", filepath.Join(golden, "models", "ella-tiny.safetensors"), "--t5", filepath.Join(golden, "models", "t5-tiny"),
		"--t5-tokenizer", filepath.Join(golden, "data", "t5", "spiece.model"), "--negative", "blurry"}
	run := func(limit string) string {
		var stderr bytes.Buffer
		o, err := parseDPGFlags(append(args, "--limit", limit), &stderr)
		if err != nil {
			t.Fatal(err)
		}
		o.sup = sup
		if err := dpg(context.Background(), o, &stderr); err != nil {
			t.Fatalf("dpg: %v\n%s", err, stderr.String())
		}
		return stderr.String()
	}
	first := run("1")
	if !strings.Contains(first, "[1/1] p1") {
		t.Errorf("first run log:\n%s", first)
	}
	second := run("0")
	if !strings.Contains(second, "1 already done, 1 to generate") || strings.Contains(second, "] p1") {
		t.Errorf("resumed run redid p1 or did not report it:\n%s", second)
	}
	for _, id := range []string{"p1", "p2"} {
		f, err := os.Open(filepath.Join(out, id+".png"))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if img.Bounds().Dx() != 128 || img.Bounds().Dy() != 128 {
			t.Errorf("%s.png is %v, want a 2x2 grid of 64 px samples", id, img.Bounds())
		}
		if a, b := img.At(10, 10), img.At(74, 74); sameColor(a, b) && sameColor(img.At(20, 30), img.At(84, 94)) {
			t.Errorf("%s.png: samples 0 and 3 look identical (seeds not distinct?)", id)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(out, "*.tmp")); len(m) > 0 {
		t.Errorf("temporary files left: %v", m)
	}
}

func sameColor(a, b color.Color) bool {
	r1, g1, b1, _ := a.RGBA()
	r2, g2, b2, _ := b.RGBA()
	return r1 == r2 && g1 == g2 && b1 == b2
}
