// shapes.go: cudacheck's checks of the GPU layout and broadcast ops
// (ChannelsLast, ChannelsFirst, AddBatchChannelBias, UpsampleNearest,
// ConcatChannels) against nn's CPU versions. Exact ops: any difference fails. Timing is not done here.
package main

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

func checkShapes(g *nn.GPU) {
	guard("channels-last [2,48,7,9]", func() error {
		x := randT(1, 2, 48, 7, 9)
		want := nn.ChannelsLast(x)
		dx := up(g, x)
		defer dx.Free()
		y, err := g.ChannelsLast(dx)
		if err != nil {
			return err
		}
		defer y.Free()
		compare("channels-last [2,48,7,9]", down(y), want.Data, 0)
		return nil
	})
	guard("channels-first [2,63,40] as 7x9", func() error {
		x := randT(1, 2, 63, 40)
		want := nn.ChannelsFirst(x, 7, 9)
		dx := up(g, x)
		defer dx.Free()
		y, err := g.ChannelsFirst(dx, 7, 9)
		if err != nil {
			return err
		}
		defer y.Free()
		compare("channels-first [2,63,40] as 7x9", down(y), want.Data, 0)
		return nil
	})
	guard("add batch-channel bias [2,40,5,6] + [2,40]", func() error {
		x, b := randT(1, 2, 40, 5, 6), randT(1, 2, 40)
		want := x.Clone()
		nn.AddBatchChannelBias(want, b)
		dx, db := up(g, x), up(g, b)
		defer dx.Free()
		defer db.Free()
		if err := g.AddBatchChannelBias(dx, db); err != nil {
			return err
		}
		compare("add batch-channel bias [2,40,5,6] + [2,40]", down(dx), want.Data, 0)
		return nil
	})
	for _, tc := range []struct{ h, w, oh, ow int }{{5, 7, 10, 14}, {5, 7, 9, 13}, {4, 4, 7, 8}} {
		name := fmt.Sprintf("upsample nearest [2,3,%d,%d] -> %dx%d", tc.h, tc.w, tc.oh, tc.ow)
		guard(name, func() error {
			x := randT(1, 2, 3, tc.h, tc.w)
			want := nn.UpsampleNearest(x, tc.oh, tc.ow)
			dx := up(g, x)
			defer dx.Free()
			y, err := g.UpsampleNearest(dx, tc.oh, tc.ow)
			if err != nil {
				return err
			}
			defer y.Free()
			compare(name, down(y), want.Data, 0)
			return nil
		})
	}
	guard("concat channels [2,3,4,5] + [2,6,4,5]", func() error {
		a, b := randT(1, 2, 3, 4, 5), randT(1, 2, 6, 4, 5)
		want := nn.Concat(1, a, b)
		da, db := up(g, a), up(g, b)
		defer da.Free()
		defer db.Free()
		y, err := g.ConcatChannels(da, db)
		if err != nil {
			return err
		}
		defer y.Free()
		compare("concat channels [2,3,4,5] + [2,6,4,5]", down(y), want.Data, 0)
		return nil
	})
}
