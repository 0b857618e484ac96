// upsample_size_test.go checks UpsampleNearest against torch's nearest
// index rule (hand-worked sizes), against UpsampleNearest2x at exact 2x,
// and the values it copies on odd sizes.
package nn

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestNearestIndex(t *testing.T) {
	tests := []struct {
		in, out int
		want    []int
	}{
		{3, 3, []int{0, 1, 2}},
		{3, 6, []int{0, 0, 1, 1, 2, 2}},
		{3, 5, []int{0, 0, 1, 1, 2}},             // odd skip: ceil(5/2) = 3 -> 5
		{5, 9, []int{0, 0, 1, 1, 2, 2, 3, 3, 4}}, // scale 5/9
		{1, 1, []int{0}},
		{1, 3, []int{0, 0, 0}},
		{5, 3, []int{0, 1, 3}}, // downsizing: floor(i * 5/3)
		{7, 13, []int{0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d->%d", tt.in, tt.out), func(t *testing.T) {
			if diff := cmp.Diff(tt.want, nearestIndex(tt.in, tt.out)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestUpsampleNearest(t *testing.T) {
	tests := []struct {
		name       string
		b, c, h, w int
		oh, ow     int
	}{
		{"exact 2x", 2, 3, 4, 5, 8, 10},
		{"odd both", 1, 2, 5, 7, 9, 13},
		{"odd height", 2, 1, 3, 4, 5, 8},
		{"same size", 1, 2, 3, 3, 3, 3},
		{"1x1 to 1x2", 1, 1, 1, 1, 1, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := New(tt.b, tt.c, tt.h, tt.w)
			for i := range x.Data {
				x.Data[i] = float32(i)
			}
			got := UpsampleNearest(x, tt.oh, tt.ow) // [B, C, oh, ow]
			if diff := cmp.Diff([]int{tt.b, tt.c, tt.oh, tt.ow}, got.Shape); diff != "" {
				t.Fatalf("shape (-want +got):\n%s", diff)
			}
			ys, xs := nearestIndex(tt.h, tt.oh), nearestIndex(tt.w, tt.ow)
			for p := range tt.b * tt.c {
				for y := range tt.oh {
					for xx := range tt.ow {
						want := x.Data[p*tt.h*tt.w+ys[y]*tt.w+xs[xx]]
						if g := got.Data[p*tt.oh*tt.ow+y*tt.ow+xx]; g != want {
							t.Fatalf("plane %d (%d, %d): got %v, want %v", p, y, xx, g, want)
						}
					}
				}
			}
			if tt.oh == 2*tt.h && tt.ow == 2*tt.w {
				if diff := cmp.Diff(UpsampleNearest2x(x).Data, got.Data); diff != "" {
					t.Errorf("differs from UpsampleNearest2x (-want +got):\n%s", diff)
				}
			}
		})
	}
}
