// preprocess.go: the hint preprocessors that need no neural network, run on
// the control image after it was fitted to the generation size:
//
//	none                  the image as is (a ready-made map)
//	canny[:LOW[:HIGH]]    OpenCV-style Canny, default 100/200 (canny.go)
//	invert                1 - v: black lines on white -> white on black
//	scribble[:THR]        a drawing -> white strokes on black: pixels whose
//	                      darkest channel is below THR/255 (default 127) become
//	                      1, others 0 (ControlNet gradio_scribble2image.py)
//	tile[:RATE]           tile_resample: area-downsample by RATE (1-64,
//	                      default 1 = unchanged) and scale back up bilinearly
//	blur[:SIGMA]          Gaussian blur (blur_gaussian), default sigma 9 (<= 64),
//	                      kernel radius ceil(3 sigma), reflect-101 borders
//
// Detection at a separate "preprocessor resolution" (A1111's 512 default) is
// not done: the map is computed at the output size, as A1111's "pixel
// perfect" mode does. It does not load or resize images (hint_image.go).
package controlnet

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/sdbridge/sdbridge/nn"
)

// Preprocessor is a parsed preprocessor spec.
type Preprocessor struct {
	Name string
	Args []float64 // positional, as given after ':'
}

// PreprocessorNames lists the accepted names.
var PreprocessorNames = []string{"none", "canny", "invert", "scribble", "tile", "blur"}

// ParsePreprocessor parses "name[:arg[:arg]]".
func ParsePreprocessor(s string) (Preprocessor, error) {
	parts := strings.Split(strings.TrimSpace(s), ":")
	p := Preprocessor{Name: strings.ToLower(parts[0])}
	if p.Name == "" {
		p.Name = "none"
	}
	maxArgs := map[string]int{"none": 0, "canny": 2, "invert": 0, "scribble": 1, "tile": 1, "blur": 1}
	n, ok := maxArgs[p.Name]
	if !ok {
		return p, fmt.Errorf("preprocessor %q: unknown (want one of %s)", s, strings.Join(PreprocessorNames, ", "))
	}
	if len(parts)-1 > n {
		return p, fmt.Errorf("preprocessor %q: %s takes at most %d arguments", s, p.Name, n)
	}
	for _, a := range parts[1:] {
		v, err := strconv.ParseFloat(a, 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return p, fmt.Errorf("preprocessor %q: bad argument %q", s, a)
		}
		p.Args = append(p.Args, v)
	}
	return p, nil
}

func (p Preprocessor) arg(i int, def float64) float64 {
	if i < len(p.Args) {
		return p.Args[i]
	}
	return def
}

// Apply runs the preprocessor on img [1, C, H, W] in [0, 1] and returns a
// new [1, 3, H, W] hint.
func (p Preprocessor) Apply(img *nn.Tensor) (*nn.Tensor, error) {
	if img == nil || len(img.Shape) != 4 || img.Shape[0] != 1 || (img.Shape[1] != 3 && img.Shape[1] != 1) {
		return nil, fmt.Errorf("preprocess %s: image shape %v, want [1, 3 or 1, H, W]", p.Name, img.Shape)
	}
	rgb := toRGB(img)
	switch p.Name {
	case "none", "":
		return rgb, nil
	case "canny":
		return Canny(rgb, p.arg(0, 100), p.arg(1, 200))
	case "invert":
		for i, v := range rgb.Data {
			rgb.Data[i] = 1 - v
		}
		return rgb, nil
	case "scribble":
		return Scribble(rgb, p.arg(0, 127)), nil
	case "tile":
		rate := p.arg(0, 1)
		if rate < 1 || rate > 64 {
			return nil, fmt.Errorf("preprocess tile: rate %v must be between 1 and 64", rate)
		}
		h, w := rgb.Shape[2], rgb.Shape[3]
		small := Resample(rgb, max(1, int(float64(w)/rate)), max(1, int(float64(h)/rate)))
		return Resample(small, w, h), nil
	case "blur":
		sigma := p.arg(0, 9)
		if sigma <= 0 || sigma > 64 {
			return nil, fmt.Errorf("preprocess blur: sigma %v must be between 0 and 64", sigma)
		}
		return GaussianBlur(rgb, sigma), nil
	}
	return nil, fmt.Errorf("preprocess: unknown preprocessor %q", p.Name)
}

// toRGB copies img as 3 channels (a gray image is replicated).
func toRGB(img *nn.Tensor) *nn.Tensor {
	if img.Shape[1] == 3 {
		return img.Clone()
	}
	h, w := img.Shape[2], img.Shape[3]
	out := nn.New(1, 3, h, w) // [1, 3, H, W]
	for ch := range 3 {
		copy(out.Data[ch*h*w:], img.Data)
	}
	return out
}

// Scribble maps a drawing to white strokes on black: a pixel whose darkest
// channel is below thr (0-255 scale) becomes 1, every other 0.
func Scribble(rgb *nn.Tensor, thr float64) *nn.Tensor {
	h, w := rgb.Shape[2], rgb.Shape[3]
	n := h * w
	out := nn.New(1, 3, h, w) // [1, 3, H, W]
	for i := range n {
		m := min(rgb.Data[i], rgb.Data[n+i], rgb.Data[2*n+i])
		if float64(m)*255 < thr {
			out.Data[i], out.Data[n+i], out.Data[2*n+i] = 1, 1, 1
		}
	}
	return out
}

// GaussianBlur blurs each channel of t [1, C, H, W] with a separable
// Gaussian of sigma (radius ceil(3 sigma), reflect-101 borders as OpenCV).
func GaussianBlur(t *nn.Tensor, sigma float64) *nn.Tensor {
	r := int(math.Ceil(3 * sigma))
	k := make([]float32, 2*r+1)
	var sum float64
	for i := -r; i <= r; i++ {
		v := math.Exp(-float64(i*i) / (2 * sigma * sigma))
		k[i+r] = float32(v)
		sum += v
	}
	for i := range k {
		k[i] /= float32(sum)
	}
	c, h, w := t.Shape[1], t.Shape[2], t.Shape[3]
	out := nn.New(1, c, h, w) // [1, C, H, W]
	tmp := make([]float32, h*w)
	for ch := range c {
		src := t.Data[ch*h*w : (ch+1)*h*w]
		dst := out.Data[ch*h*w : (ch+1)*h*w]
		for y := range h {
			for x := range w {
				var s float32
				for i, kv := range k {
					s += kv * src[y*w+reflect101(x+i-r, w)]
				}
				tmp[y*w+x] = s
			}
		}
		for y := range h {
			for x := range w {
				var s float32
				for i, kv := range k {
					s += kv * tmp[reflect101(y+i-r, h)*w+x]
				}
				dst[y*w+x] = s
			}
		}
	}
	return out
}

// reflect101 maps i into [0, n) mirroring without repeating the edge
// (OpenCV BORDER_REFLECT_101: dcb|abcd|cba).
func reflect101(i, n int) int {
	if n == 1 {
		return 0
	}
	for i < 0 || i >= n {
		if i < 0 {
			i = -i
		}
		if i >= n {
			i = 2*(n-1) - i
		}
	}
	return i
}

// PrepareHint loads path, fits it to width x height with mode and runs the
// preprocessor spec: the hint the host sends, [1, 3, height, width].
func PrepareHint(path string, width, height int, mode, preprocess string) (*nn.Tensor, error) {
	p, err := ParsePreprocessor(preprocess)
	if err != nil {
		return nil, err
	}
	img, err := LoadImage(path)
	if err != nil {
		return nil, err
	}
	fit, err := Fit(img, width, height, mode)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out, err := p.Apply(fit)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}
