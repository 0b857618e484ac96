// preprocess_test.go: table tests of the hint side on small synthetic
// images: Canny finds a square's edges where OpenCV does and keeps weak
// edges only through hysteresis; invert, scribble, tile and blur; fitting
// (resize, crop, pad) and area/bilinear resampling; PNG and JPEG decoding;
// and fuzzing of the image decoder and the preprocessor spec parser.
package controlnet

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdbridge/sdbridge/nn"
)

// square is an n x n gray image [1, 3, n, n] of value bg with a square of
// value fg covering [a, b) in both axes.
func square(n, a, b int, bg, fg float32) *nn.Tensor {
	t := nn.New(1, 3, n, n)
	for ch := range 3 {
		for y := range n {
			for x := range n {
				v := bg
				if y >= a && y < b && x >= a && x < b {
					v = fg
				}
				t.Data[ch*n*n+y*n+x] = v
			}
		}
	}
	return t
}

// edgeCols lists the columns of row y that are edges (channel 0).
func edgeCols(t *nn.Tensor, y int) []int {
	w := t.Shape[3]
	var out []int
	for x := range w {
		if t.Data[y*w+x] != 0 {
			out = append(out, x)
		}
	}
	return out
}

func edgeRows(t *nn.Tensor, x int) []int {
	h, w := t.Shape[2], t.Shape[3]
	var out []int
	for y := range h {
		if t.Data[y*w+x] != 0 {
			out = append(out, y)
		}
	}
	return out
}

func TestCanny(t *testing.T) {
	tests := []struct {
		name      string
		img       *nn.Tensor
		low, high float64
		want      []int // edge columns on row 32 (and rows on column 32)
	}{
		// A step between x=15 (dark) and x=16 (bright) has equal Sobel
		// magnitude on both pixels; OpenCV keeps the first (> left, >= right).
		{"white square", square(64, 16, 48, 0, 1), 100, 200, []int{15, 47}},
		{"black square on white", square(64, 16, 48, 1, 0), 100, 200, []int{15, 47}},
		// Contrast 40: magnitude 4*40 = 160, between low and high: weak
		// edges with no strong seed vanish. (A square would not do: with
		// the L1 norm its corners reach 240 and seed the whole outline.)
		{"weak only", vstep(64, 40.0/255, 40.0/255), 100, 200, nil},
		{"weak with lower high", vstep(64, 40.0/255, 40.0/255), 100, 150, []int{31}},
		{"swapped thresholds", square(64, 16, 48, 0, 1), 200, 100, []int{15, 47}},
		{"flat", square(64, 0, 0, 0.5, 0.5), 100, 200, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Canny(tt.img, tt.low, tt.high)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, edgeCols(got, 32)); diff != "" {
				t.Errorf("row 32 edges (-want +got):\n%s", diff)
			}
			if tt.img.Shape[2] == 64 && tt.img.Data[0] != tt.img.Data[64*64-1] {
				return // a vertical step has no horizontal edges
			}
			if diff := cmp.Diff(tt.want, edgeRows(got, 32)); diff != "" {
				t.Errorf("column 32 edges (-want +got):\n%s", diff)
			}
			for _, v := range got.Data {
				if v != 0 && v != 1 {
					t.Fatalf("edge map value %v, want 0 or 1", v)
				}
			}
		})
	}
}

// vstep is an n x n image, 0 left of column n/2, top (rows < n/2) and
// bottom values right of it.
func vstep(n int, top, bottom float32) *nn.Tensor {
	t := nn.New(1, 3, n, n)
	for ch := range 3 {
		for y := range n {
			for x := n / 2; x < n; x++ {
				v := top
				if y >= n/2 {
					v = bottom
				}
				t.Data[ch*n*n+y*n+x] = v
			}
		}
	}
	return t
}

// TestCannyHysteresis: a weak edge connected to a strong one survives.
func TestCannyHysteresis(t *testing.T) {
	got, err := Canny(vstep(64, 1, 40.0/255), 100, 200)
	if err != nil {
		t.Fatal(err)
	}
	// Near the junction (rows 31, 32) the gradient turns diagonal and NMS
	// moves the edge a column; the weak rows below must all be kept.
	rows := edgeRows(got, 31)
	for y := 34; y < 64; y++ {
		if !slices.Contains(rows, y) {
			t.Fatalf("edge column 31 has rows %v: weak row %d not kept through hysteresis", rows, y)
		}
	}
	alone, err := Canny(vstep(64, 40.0/255, 40.0/255), 100, 200)
	if err != nil {
		t.Fatal(err)
	}
	if rows := edgeRows(alone, 31); len(rows) != 0 {
		t.Fatalf("isolated weak edge kept at rows %v", rows)
	}
}

func TestPreprocessors(t *testing.T) {
	img := square(16, 4, 12, 1, 0) // black square on white
	tests := []struct {
		name  string
		spec  string
		check func(t *testing.T, out *nn.Tensor)
	}{
		{"none", "none", func(t *testing.T, out *nn.Tensor) {
			if diff := cmp.Diff(img.Data, out.Data); diff != "" {
				t.Error(diff)
			}
		}},
		{"invert", "invert", func(t *testing.T, out *nn.Tensor) {
			if out.Data[0] != 0 || out.Data[8*16+8] != 1 {
				t.Errorf("corner %v centre %v, want 0 and 1", out.Data[0], out.Data[8*16+8])
			}
		}},
		{"scribble", "scribble", func(t *testing.T, out *nn.Tensor) {
			if out.Data[0] != 0 || out.Data[8*16+8] != 1 {
				t.Errorf("white paper %v, black stroke %v, want 0 and 1", out.Data[0], out.Data[8*16+8])
			}
		}},
		{"scribble threshold 0", "scribble:0", func(t *testing.T, out *nn.Tensor) {
			if out.Data[8*16+8] != 0 {
				t.Errorf("threshold 0 kept a stroke")
			}
		}},
		{"tile rate 1", "tile", func(t *testing.T, out *nn.Tensor) {
			if diff := cmp.Diff(img.Data, out.Data); diff != "" {
				t.Error(diff)
			}
		}},
		{"tile rate 16", "tile:16", func(t *testing.T, out *nn.Tensor) {
			want := float32(1 - 64.0/256) // mean of the image
			for _, v := range out.Data {
				if math.Abs(float64(v-want)) > 1e-5 {
					t.Fatalf("value %v, want the mean %v", v, want)
				}
			}
		}},
		{"blur keeps the mean of a flat image", "blur:2", func(t *testing.T, out *nn.Tensor) {
			flat, _ := Preprocessor{Name: "blur", Args: []float64{2}}.Apply(square(16, 0, 0, 0.25, 0.25))
			for _, v := range flat.Data {
				if math.Abs(float64(v)-0.25) > 1e-6 {
					t.Fatalf("blurred flat image has %v", v)
				}
			}
			if c := out.Data[8*16+8]; c <= 0 || c >= 0.5 {
				t.Errorf("blurred centre %v, want between 0 and 0.5", c)
			}
		}},
		{"canny args", "canny:50:100", func(t *testing.T, out *nn.Tensor) {
			if diff := cmp.Diff([]int{3, 11}, edgeCols(out, 8)); diff != "" {
				t.Error(diff)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePreprocessor(tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			out, err := p.Apply(img)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]int{1, 3, 16, 16}, out.Shape); diff != "" {
				t.Fatal(diff)
			}
			tt.check(t, out)
		})
	}
}

func TestParsePreprocessorErrors(t *testing.T) {
	for _, spec := range []string{"hed", "canny:1:2:3", "canny:x", "invert:1", "tile:NaN"} {
		t.Run(spec, func(t *testing.T) {
			if _, err := ParsePreprocessor(spec); err == nil {
				t.Fatalf("%q accepted", spec)
			}
		})
	}
	if _, err := (Preprocessor{Name: "tile", Args: []float64{0.5}}).Apply(square(8, 0, 0, 0, 0)); err == nil {
		t.Fatal("tile rate 0.5 accepted")
	}
}

func TestResample(t *testing.T) {
	// A 4x4 checkerboard area-averaged to 2x2 is flat 0.5; a 2x2 image
	// grown to 4x4 bilinearly keeps its corners and interpolates between.
	cb := nn.New(1, 1, 4, 4)
	for i := range cb.Data {
		if (i/4+i%4)%2 == 0 {
			cb.Data[i] = 1
		}
	}
	down := Resample(cb, 2, 2)
	if diff := cmp.Diff([]float32{0.5, 0.5, 0.5, 0.5}, down.Data); diff != "" {
		t.Errorf("area down (-want +got):\n%s", diff)
	}
	up := Resample(nn.From([]float32{0, 1, 0, 1}, 1, 1, 2, 2), 4, 2)
	if diff := cmp.Diff([]float32{0, 0.25, 0.75, 1, 0, 0.25, 0.75, 1}, up.Data); diff != "" {
		t.Errorf("bilinear up (-want +got):\n%s", diff)
	}
}

func TestFit(t *testing.T) {
	// 8 wide x 4 high: left half 0, right half 1, on every channel.
	img := nn.New(1, 3, 4, 8)
	for ch := range 3 {
		for y := range 4 {
			for x := 4; x < 8; x++ {
				img.Data[ch*32+y*8+x] = 1
			}
		}
	}
	tests := []struct {
		mode      string
		w, h      int
		wantRow0  []float32 // channel 0, row 0
		wantError string
	}{
		{ResizeStretch, 4, 4, []float32{0, 0, 1, 1}, ""},
		{ResizeCrop, 4, 4, []float32{0, 0, 1, 1}, ""},            // 8x4 -> 8x4 (cover) -> centre 4 cols: 2..5
		{ResizeCrop, 2, 4, []float32{0, 1}, ""},                  // centre 2 of 8: cols 3, 4
		{ResizePad, 8, 8, []float32{0, 0, 0, 0, 1, 1, 1, 1}, ""}, // first row is border fill (median 0 or 1)
		{"zoom", 4, 4, nil, "unknown resize mode"},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			got, err := Fit(img, tt.w, tt.h, tt.mode)
			if tt.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantError) {
					t.Fatalf("error %v, want %q", err, tt.wantError)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]int{1, 3, tt.h, tt.w}, got.Shape); diff != "" {
				t.Fatal(diff)
			}
			if tt.mode == ResizePad {
				// Rows 2..5 hold the image; rows 0, 1, 6, 7 the fill.
				if diff := cmp.Diff([]float32{0, 0, 0, 0, 1, 1, 1, 1}, got.Data[2*8:3*8]); diff != "" {
					t.Errorf("image row (-want +got):\n%s", diff)
				}
				fill := got.Data[0]
				for _, v := range got.Data[:8] {
					if v != fill {
						t.Errorf("fill row not uniform: %v", got.Data[:8])
					}
				}
				return
			}
			if diff := cmp.Diff(tt.wantRow0, got.Data[:tt.w]); diff != "" {
				t.Errorf("row 0 (-want +got):\n%s", diff)
			}
		})
	}
}

func encodeImage(t testing.TB, format string) []byte {
	img := image.NewRGBA(image.Rect(0, 0, 16, 8))
	for y := range 8 {
		for x := range 16 {
			img.Set(x, y, color.RGBA{R: 255, G: uint8(16 * x), B: 0, A: 255})
		}
	}
	var buf bytes.Buffer
	var err error
	if format == "png" {
		err = png.Encode(&buf, img)
	} else {
		err = jpeg.Encode(&buf, img, &jpeg.Options{Quality: 95})
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDecodeImage(t *testing.T) {
	for _, format := range []string{"png", "jpeg"} {
		t.Run(format, func(t *testing.T) {
			got, err := DecodeImage(bytes.NewReader(encodeImage(t, format)))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]int{1, 3, 8, 16}, got.Shape); diff != "" {
				t.Fatal(diff)
			}
			tol := 1e-6
			if format == "jpeg" {
				tol = 0.05
			}
			if r := got.Data[3*16+5]; math.Abs(float64(r)-1) > tol {
				t.Errorf("red %v, want 1", r)
			}
			if g := got.Data[128+3*16+10]; math.Abs(float64(g)-160.0/255) > tol {
				t.Errorf("green %v, want %v", g, 160.0/255)
			}
		})
	}
	t.Run("garbage", func(t *testing.T) {
		if _, err := DecodeImage(strings.NewReader("GIF89a....")); err == nil || !strings.Contains(err.Error(), "not a PNG or JPEG") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("file", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "hint.png")
		if err := os.WriteFile(p, encodeImage(t, "png"), 0o644); err != nil {
			t.Fatal(err)
		}
		hint, err := PrepareHint(p, 32, 16, ResizeCrop, "canny")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]int{1, 3, 16, 32}, hint.Shape); diff != "" {
			t.Fatal(diff)
		}
		if _, err := PrepareHint(filepath.Join(t.TempDir(), "none.png"), 32, 16, ResizeCrop, "none"); err == nil {
			t.Fatal("missing file accepted")
		}
	})
}

func FuzzDecodeImage(f *testing.F) {
	f.Add(encodeImage(f, "png"))
	f.Add(encodeImage(f, "jpeg"))
	f.Add([]byte("\x89PNG\r\n\x1a\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := DecodeImage(bytes.NewReader(b))
		if err != nil {
			return
		}
		if len(img.Shape) != 4 || img.Shape[1] != 3 || len(img.Data) != img.Numel() {
			t.Fatalf("decoded shape %v with %d values", img.Shape, len(img.Data))
		}
	})
}

func FuzzParsePreprocessor(f *testing.F) {
	for _, s := range []string{"canny:100:200", "scribble:127", "tile:2", "blur:9", "none", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePreprocessor(s)
		if err != nil {
			return
		}
		if _, err := p.Apply(square(8, 2, 6, 0, 1)); err != nil && !strings.Contains(err.Error(), "must be") {
			t.Fatalf("%q parsed but failed: %v", s, err)
		}
	})
}
