// canny.go: the Canny edge detector as OpenCV's cv2.Canny(img, low, high)
// computes it, which is what the A1111 and lllyasviel ControlNet "canny"
// preprocessors call (defaults low 100, high 200, on 8-bit values):
//
//   - input quantised to 8 bits (round(v*255)); a 3-channel image keeps, per
//     pixel, the gradient of the channel with the largest magnitude (OpenCV's
//     multi-channel rule), so no RGB->gray conversion happens;
//   - 3x3 Sobel dx, dy with replicated borders; magnitude |dx| + |dy| (the
//     default L2gradient=false); thresholds floored to integers;
//   - non-maximum suppression in 4 sectors (tan 22.5 and tan 67.5 tests;
//     ties broken as OpenCV: strictly greater than the previous neighbour,
//     greater or equal to the next; diagonals strict on both sides);
//   - double threshold (> low candidate, > high strong) and 8-connected
//     hysteresis from the strong pixels.
//
// There is no Gaussian blur (cv2.Canny does none; kornia's canny, used by
// ComfyUI's node, blurs first and thresholds in [0, 1] with 0.4/0.8 defaults;
// use the blur preprocessor first for that look). Output: white edges (1)
// on black (0). This mirrors OpenCV's scalar code path (imgproc canny.cpp);
// it has not been compared pixel by pixel with OpenCV itself (no OpenCV in
// the build or test environment), only against the expected behaviour on
// synthetic images (preprocess_test.go).
package controlnet

import (
	"fmt"
	"math"

	"github.com/sdbridge/sdbridge/nn"
)

// Canny returns the edge map [1, 3, H, W] (edges 1, else 0, replicated to 3
// channels) of img [1, C, H, W] in [0, 1], thresholds on the 0-255 scale.
func Canny(img *nn.Tensor, low, high float64) (*nn.Tensor, error) {
	if img == nil || len(img.Shape) != 4 || img.Shape[0] != 1 {
		return nil, fmt.Errorf("canny: image shape %v, want [1, C, H, W]", img.Shape)
	}
	if low < 0 || high < 0 || math.IsNaN(low) || math.IsNaN(high) {
		return nil, fmt.Errorf("canny: thresholds %v/%v must be non-negative", low, high)
	}
	if low > high {
		low, high = high, low
	}
	c, h, w := img.Shape[1], img.Shape[2], img.Shape[3]
	lo, hi := int32(math.Floor(low)), int32(math.Floor(high))

	// Gradients of the strongest channel.
	dx := make([]int32, h*w)
	dy := make([]int32, h*w)
	mag := make([]int32, (h+2)*(w+2)) // zero border for NMS
	q := make([]int32, h*w)
	for ch := range c {
		p := img.Data[ch*h*w : (ch+1)*h*w]
		for i, v := range p {
			q[i] = int32(math.Round(float64(min(max(v, 0), 1)) * 255))
		}
		at := func(y, x int) int32 { return q[min(max(y, 0), h-1)*w+min(max(x, 0), w-1)] }
		for y := range h {
			for x := range w {
				gx := (at(y-1, x+1) + 2*at(y, x+1) + at(y+1, x+1)) - (at(y-1, x-1) + 2*at(y, x-1) + at(y+1, x-1))
				gy := (at(y+1, x-1) + 2*at(y+1, x) + at(y+1, x+1)) - (at(y-1, x-1) + 2*at(y-1, x) + at(y-1, x+1))
				m := abs32(gx) + abs32(gy)
				mi := (y+1)*(w+2) + x + 1
				if ch == 0 || m > mag[mi] {
					mag[mi], dx[y*w+x], dy[y*w+x] = m, gx, gy
				}
			}
		}
	}

	// Non-maximum suppression and double threshold.
	// state: 0 candidate (weak), 1 not an edge, 2 edge.
	const shift = 15
	tg22 := int64(13573) // round(tan(22.5 deg) * 2^15), OpenCV TG22
	state := make([]uint8, (h+2)*(w+2))
	for i := range state {
		state[i] = 1
	}
	stride := w + 2
	var stack []int
	for y := range h {
		prevFlag := false
		for x := range w {
			mi := (y+1)*stride + x + 1
			m := mag[mi]
			if m <= lo {
				prevFlag = false
				continue
			}
			gx, gy := int64(dx[y*w+x]), int64(dy[y*w+x])
			xs, ys := abs64(gx), abs64(gy)
			tg22x := xs * tg22
			keep := false
			if ys<<shift < tg22x {
				keep = m > mag[mi-1] && m >= mag[mi+1]
			} else {
				tg67x := tg22x + xs<<(shift+1)
				if ys<<shift > tg67x {
					keep = m > mag[mi-stride] && m >= mag[mi+stride]
				} else {
					s := 1
					if (gx < 0) != (gy < 0) {
						s = -1
					}
					keep = m > mag[mi-stride-s] && m > mag[mi+stride+s]
				}
			}
			if !keep {
				prevFlag = false
				continue
			}
			if !prevFlag && m > hi && state[mi-stride] != 2 {
				state[mi] = 2
				stack = append(stack, mi)
				prevFlag = true
			} else {
				state[mi] = 0
			}
		}
	}

	// Hysteresis: grow strong edges through 8-connected candidates.
	nb := []int{-stride - 1, -stride, -stride + 1, -1, 1, stride - 1, stride, stride + 1}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, d := range nb {
			if state[i+d] == 0 {
				state[i+d] = 2
				stack = append(stack, i+d)
			}
		}
	}

	out := nn.New(1, 3, h, w) // [1, 3, H, W]
	for y := range h {
		for x := range w {
			if state[(y+1)*stride+x+1] == 2 {
				for ch := range 3 {
					out.Data[ch*h*w+y*w+x] = 1
				}
			}
		}
	}
	return out, nil
}

func abs32(v int32) int32 {
	if v < 0 {
		return -v
	}
	return v
}

func abs64(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}
