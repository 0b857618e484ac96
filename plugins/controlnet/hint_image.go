// hint_image.go: control images in: PNG or JPEG decoded to RGB in [0, 1]
// as [1, 3, H, W], and fitted to the generation size (8x the latent) in one
// of three ways (A1111's resize modes):
//
//   - resize ("Just Resize"): stretch to W x H, aspect not kept;
//   - crop ("Crop and Resize", A1111's default): scale to cover W x H, keep
//     the centre;
//   - pad ("Resize and Fill"): scale to fit inside W x H, fill the border
//     with the median colour of the image's edge pixels (as A1111).
//
// Resampling is separable: area averaging along an axis that shrinks
// (OpenCV INTER_AREA-like) and bilinear with half-pixel centres along one
// that grows (INTER_LINEAR), so thin lines survive downscaling. A1111 uses
// bicubic to grow and nearest for label maps; those are not offered.
// Transparent pixels are taken as premultiplied over black.
//
// It does not detect anything (preprocess.go) and never reads other formats.
package controlnet

import (
	"bytes"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"os"
	"slices"

	"github.com/sdbridge/sdbridge/nn"
)

// Resize modes.
const (
	ResizeStretch = "resize"
	ResizeCrop    = "crop"
	ResizePad     = "pad"
)

// ResizeModes lists the accepted modes.
var ResizeModes = []string{ResizeStretch, ResizeCrop, ResizePad}

// MaxImagePixels bounds a control image's size (the header is checked
// before any pixel is decoded, so a hostile header cannot make us allocate
// gigabytes).
const MaxImagePixels = 64 << 20

// DecodeImage reads a PNG or JPEG (sniffed from the bytes, not the name)
// as RGB [1, 3, H, W] in [0, 1].
func DecodeImage(r io.Reader) (*nn.Tensor, error) {
	b, err := io.ReadAll(io.LimitReader(r, 1<<30))
	if err != nil {
		return nil, fmt.Errorf("control image: %w", err)
	}
	var decode func(io.Reader) (image.Image, error)
	var config func(io.Reader) (image.Config, error)
	switch {
	case bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")):
		decode, config = png.Decode, png.DecodeConfig
	case bytes.HasPrefix(b, []byte{0xFF, 0xD8, 0xFF}):
		decode, config = jpeg.Decode, jpeg.DecodeConfig
	default:
		return nil, fmt.Errorf("control image: not a PNG or JPEG file")
	}
	cfg, err := config(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("control image: %w", err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || cfg.Width*cfg.Height > MaxImagePixels {
		return nil, fmt.Errorf("control image: %dx%d px is empty or larger than %d pixels", cfg.Width, cfg.Height, MaxImagePixels)
	}
	img, err := decode(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("control image: %w", err)
	}
	return imageTensor(img), nil
}

// LoadImage reads a PNG or JPEG file as RGB [1, 3, H, W] in [0, 1].
func LoadImage(path string) (*nn.Tensor, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("control image: %w", err)
	}
	defer f.Close()
	t, err := DecodeImage(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// imageTensor converts img to [1, 3, H, W] in [0, 1].
func imageTensor(img image.Image) *nn.Tensor {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	t := nn.New(1, 3, h, w) // [1, 3, H, W]
	plane := h * w
	for y := range h {
		for x := range w {
			r, g, bl, _ := img.At(b.Min.X+x, b.Min.Y+y).RGBA() // 16-bit, premultiplied
			i := y*w + x
			t.Data[i] = float32(r) / 65535
			t.Data[plane+i] = float32(g) / 65535
			t.Data[2*plane+i] = float32(bl) / 65535
		}
	}
	return t
}

// Fit resizes img [1, C, H, W] to [1, C, height, width] with mode.
func Fit(img *nn.Tensor, width, height int, mode string) (*nn.Tensor, error) {
	if img == nil || len(img.Shape) != 4 || img.Shape[0] != 1 || img.Shape[2] == 0 || img.Shape[3] == 0 {
		return nil, fmt.Errorf("control image: shape %v, want [1, C, H, W]", img.Shape)
	}
	if width <= 0 || height <= 0 {
		return nil, fmt.Errorf("control image: target size %dx%d", width, height)
	}
	ih, iw := img.Shape[2], img.Shape[3]
	switch mode {
	case ResizeStretch, "":
		return Resample(img, width, height), nil
	case ResizeCrop:
		// Scale so the image covers the target, then cut the centre.
		s := math.Max(float64(width)/float64(iw), float64(height)/float64(ih))
		sw, sh := max(width, int(math.Round(float64(iw)*s))), max(height, int(math.Round(float64(ih)*s)))
		big := Resample(img, sw, sh)
		return crop(big, (sw-width)/2, (sh-height)/2, width, height), nil
	case ResizePad:
		s := math.Min(float64(width)/float64(iw), float64(height)/float64(ih))
		sw, sh := min(width, max(1, int(math.Round(float64(iw)*s)))), min(height, max(1, int(math.Round(float64(ih)*s))))
		small := Resample(img, sw, sh)
		return pad(small, borderMedian(img), (width-sw)/2, (height-sh)/2, width, height), nil
	}
	return nil, fmt.Errorf("control image: unknown resize mode %q (want resize, crop or pad)", mode)
}

func crop(t *nn.Tensor, x0, y0, w, h int) *nn.Tensor {
	c, ih, iw := t.Shape[1], t.Shape[2], t.Shape[3]
	out := nn.New(1, c, h, w) // [1, C, h, w]
	for ch := range c {
		for y := range h {
			src := t.Data[ch*ih*iw+(y0+y)*iw+x0:]
			copy(out.Data[ch*h*w+y*w:ch*h*w+(y+1)*w], src[:w])
		}
	}
	return out
}

func pad(t *nn.Tensor, fill []float32, x0, y0, w, h int) *nn.Tensor {
	c, ih, iw := t.Shape[1], t.Shape[2], t.Shape[3]
	out := nn.New(1, c, h, w) // [1, C, h, w]
	for ch := range c {
		plane := out.Data[ch*h*w : (ch+1)*h*w]
		for i := range plane {
			plane[i] = fill[ch]
		}
		for y := range ih {
			copy(plane[(y0+y)*w+x0:(y0+y)*w+x0+iw], t.Data[ch*ih*iw+y*iw:ch*ih*iw+(y+1)*iw])
		}
	}
	return out
}

// borderMedian is the per-channel median of the image's edge pixels.
func borderMedian(t *nn.Tensor) []float32 {
	c, h, w := t.Shape[1], t.Shape[2], t.Shape[3]
	out := make([]float32, c)
	for ch := range c {
		p := t.Data[ch*h*w : (ch+1)*h*w]
		var vals []float32
		for x := range w {
			vals = append(vals, p[x], p[(h-1)*w+x])
		}
		for y := 1; y < h-1; y++ {
			vals = append(vals, p[y*w], p[y*w+w-1])
		}
		slices.Sort(vals)
		out[ch] = vals[len(vals)/2]
	}
	return out
}

// tap is one source index and its weight.
type tap struct {
	i int
	w float32
}

// axisTaps returns, per output index, the source taps resampling n to m:
// area averaging when shrinking, bilinear (half-pixel centres, clamped)
// when growing, identity when equal.
func axisTaps(n, m int) [][]tap {
	out := make([][]tap, m)
	scale := float64(n) / float64(m)
	for o := range m {
		switch {
		case n == m:
			out[o] = []tap{{o, 1}}
		case n > m:
			lo, hi := float64(o)*scale, float64(o+1)*scale
			for i := int(lo); i < n && float64(i) < hi; i++ {
				cover := math.Min(hi, float64(i+1)) - math.Max(lo, float64(i))
				if cover > 1e-9 {
					out[o] = append(out[o], tap{i, float32(cover / scale)})
				}
			}
		default:
			c := (float64(o)+0.5)*scale - 0.5
			i0 := int(math.Floor(c))
			f := c - float64(i0)
			a, b := min(max(i0, 0), n-1), min(max(i0+1, 0), n-1)
			out[o] = []tap{{a, float32(1 - f)}, {b, float32(f)}}
		}
	}
	return out
}

// Resample resizes t [1, C, H, W] to [1, C, height, width] (area down,
// bilinear up, per axis).
func Resample(t *nn.Tensor, width, height int) *nn.Tensor {
	c, h, w := t.Shape[1], t.Shape[2], t.Shape[3]
	if h == height && w == width {
		return t.Clone()
	}
	xt, yt := axisTaps(w, width), axisTaps(h, height)
	tmp := make([]float32, h*width) // one channel, rows resampled
	out := nn.New(1, c, height, width)
	for ch := range c {
		src := t.Data[ch*h*w : (ch+1)*h*w]
		for y := range h {
			row := src[y*w : (y+1)*w]
			for x, taps := range xt {
				var s float32
				for _, tp := range taps {
					s += tp.w * row[tp.i]
				}
				tmp[y*width+x] = s
			}
		}
		dst := out.Data[ch*height*width : (ch+1)*height*width]
		for y, taps := range yt {
			d := dst[y*width : (y+1)*width]
			for _, tp := range taps {
				r := tmp[tp.i*width : (tp.i+1)*width]
				for x := range d {
					d[x] += tp.w * r[x]
				}
			}
		}
	}
	return out
}
