// png_test.go checks the PNG writer (pixels, text chunks readable by Go's
// decoder and by ReadPNGText), the A1111 infotext format, the AutoV2 hash,
// and fuzzes the text-chunk reader.
package host

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/sdbridge/sdbridge/nn"
)

func TestToByte(t *testing.T) {
	for _, tc := range []struct {
		x    float32
		want uint8
	}{
		{-1, 0}, {-2, 0}, {1, 255}, {3, 255}, {0, 127}, // 127.5 truncates
		{0.5, 191}, // 0.75*255 = 191.25
		{float32(nanF()), 0},
	} {
		if got := toByte(tc.x); got != tc.want {
			t.Errorf("toByte(%v) = %d, want %d", tc.x, got, tc.want)
		}
	}
}

func nanF() float64 { z := 0.0; return z / z }

func TestWritePNG(t *testing.T) {
	img := nn.New(2, 3, 2, 4) // [B, 3, H, W]
	for i := range img.Data {
		img.Data[i] = float32(i%7)/3 - 1
	}
	for _, tc := range []struct {
		name, text string
	}{
		{"latin1 tEXt", "a café\nNegative prompt: x\nSteps: 2"},
		{"utf8 iTXt", "猫, (masterpiece:1.2)\nSteps: 2"},
		{"no text", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rgba, err := ToRGBA(img, 1)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := WritePNG(&buf, rgba, tc.text); err != nil {
				t.Fatal(err)
			}
			dec, err := png.Decode(bytes.NewReader(buf.Bytes()))
			if err != nil {
				t.Fatalf("Go's decoder rejects the file: %v", err)
			}
			if dec.Bounds().Dx() != 4 || dec.Bounds().Dy() != 2 {
				t.Errorf("size %v", dec.Bounds())
			}
			// pixel (x=1, y=0) of image 1, red channel: element 1*24 + 0*8 + 1.
			r, _, _, _ := dec.At(1, 0).RGBA()
			if want := toByte(img.Data[24+1]); uint8(r>>8) != want {
				t.Errorf("red at (1,0) = %d, want %d", r>>8, want)
			}
			texts, err := ReadPNGText(buf.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			got, ok := texts["parameters"]
			if tc.text == "" {
				if ok {
					t.Errorf("empty parameters written: %q", got)
				}
				return
			}
			if got != tc.text {
				t.Errorf("parameters = %q, want %q", got, tc.text)
			}
		})
	}
	if _, err := ToRGBA(img, 2); err == nil {
		t.Error("image index out of range accepted")
	}
}

func TestInfotext(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Parameters
		want string
	}{
		{"full", Parameters{Prompt: "a cat", Negative: "blurry", Steps: 20, Sampler: "euler_ancestral", Schedule: "karras",
			CFG: 7, Seed: 42, Width: 512, Height: 768, ModelHash: "6ce0161689", ModelName: "v1-5-pruned-emaonly", ClipSkip: 2},
			"a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, RNG: CPU"},
		{"no negative, quoted model, batch, NV", Parameters{Prompt: "x", Steps: 4, Sampler: "dpmpp_2m", Schedule: "normal",
			CFG: 7.5, Seed: 1, Width: 64, Height: 64, ModelName: "a,b", BatchSize: 2, BatchPos: 1, NoiseKind: "a1111"},
			"x\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Uniform, CFG scale: 7.5, Seed: 1, Size: 64x64, Model: \"a,b\", Batch size: 2, Batch pos: 1, RNG: NV"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.p.String(); got != tc.want {
				t.Errorf("infotext:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestAutoV2Hash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := os.WriteFile(path, []byte("abc"), 0o600); err != nil {
		t.Fatal(err)
	}
	// sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
	got, err := AutoV2Hash(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != "ba7816bf8f" {
		t.Errorf("AutoV2Hash = %s, want ba7816bf8f", got)
	}
	if _, err := AutoV2Hash(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file hashed")
	}
}

func TestReadPNGTextErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"not png", []byte("GIF89a....")},
		{"truncated", append(append([]byte{}, pngSignature...), 0, 0, 0)},
		{"oversized chunk", append(append([]byte{}, pngSignature...), 0x7f, 0xff, 0xff, 0xff, 't', 'E', 'X', 't', 0, 0, 0, 0)},
	} {
		if _, err := ReadPNGText(tc.b); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
}

func FuzzReadPNGText(f *testing.F) {
	img := nn.New(1, 3, 1, 1)
	rgba, _ := ToRGBA(img, 0)
	for _, text := range []string{"a\nSteps: 1", "猫"} {
		var buf bytes.Buffer
		if err := WritePNG(&buf, rgba, text); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Add([]byte("\x89PNG\r\n\x1a\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		texts, err := ReadPNGText(b)
		if err != nil {
			return
		}
		// Whatever was read must survive a write and read back.
		for k, v := range texts {
			if k == "" || len(k) > 79 {
				continue
			}
			var buf bytes.Buffer
			if err := writeTextChunk(&buf, k, v); err != nil {
				t.Fatal(err)
			}
			stream := append(append(append([]byte{}, pngSignature...), buf.Bytes()...), 0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82)
			again, err := ReadPNGText(stream)
			if err != nil {
				t.Fatalf("re-read of %q: %v", k, err)
			}
			if again[k] != v {
				t.Fatalf("round trip of %q: %q != %q", k, again[k], v)
			}
		}
	})
}
