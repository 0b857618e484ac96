// ella_schedule_device_test.go: the whole-schedule precomputation with
// device context buffers (ELLAOptions.GPU), driving the real ELLA plugin
// code in process on the golden tiny T5 and connector, against the
// stand-in CUDA libraries and their CUDA C emulator in a child process: a
// 20-step euler pipeline run (flexible; concat in 6 steps) makes one
// batched call per half and no per-step call, and the contexts the U-Net sees and the
// latent are within rel L2 1e-6 of the per-step device path; ContextGPU
// serves the schedule's rows in the same device buffer at every step.
// Skipped under -short (about 15 s on the emulator).
package host

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/ella"
)

func TestELLAScheduleOnDevice(t *testing.T) {
	opt := tinyELLAOptions(t)
	if testing.Short() {
		t.Skip("-short: the emulated device runs take about 15 s")
	}
	if !cudatest.InChild() {
		out := cudatest.RunChild(t, "TestELLAScheduleOnDevice", cudatest.Build(t))
		for _, sub := range []string{"flexible", "concat", "ContextGPU"} {
			if !strings.Contains(out, "--- PASS: TestELLAScheduleOnDevice/"+sub) {
				t.Errorf("child did not pass subtest %s:\n%s", sub, out)
			}
		}
		t.Log(out)
		return
	}
	g, err := nn.OpenGPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	plug := inProcessELLA{ella.New(nil)}
	opt.GPU = g
	for _, tc := range []struct {
		mode  string
		steps int // concat is shorter: the per-step path costs ~0.2 s a call on the emulator
	}{{ELLAFlexible, 20}, {ELLAConcat, 6}} {
		t.Run(tc.mode, func(t *testing.T) {
			o := opt
			o.Mode = tc.mode
			n := tc.steps
			want := runELLAPipeline(t, plug, o, "euler", n, true)
			got := runELLAPipeline(t, plug, o, "euler", n, false)
			if len(got.seen) != n || len(want.seen) != n {
				t.Fatalf("U-Net calls: %d with the schedule, %d per step; want %d", len(got.seen), len(want.seen), n)
			}
			for i := range want.seen {
				if r := nn.RelL2(got.seen[i], want.seen[i]); r > 1e-6 || math.IsNaN(r) {
					t.Fatalf("U-Net call %d: context rel L2 %.3g > 1e-6 from the per-step device path", i, r)
				}
			}
			if r := nn.RelL2(got.latent, want.latent); r > 1e-6 || math.IsNaN(r) {
				t.Errorf("latent rel L2 %.3g > 1e-6 from the per-step device path", r)
			}
			if st := want.stats; st.StepCalls != 2*n || st.ScheduleCalls != 0 {
				t.Errorf("per-step path: stats %+v, want %d step calls", st, 2*n)
			}
			if st := got.stats; st.ScheduleCalls != 2 || st.StepCalls != 0 || st.Calls != 2 || st.Scheduled != 2*n {
				t.Errorf("schedule path: stats %+v, want 1 batched call per half, 0 step calls, %d served", st, 2*n)
			}
		})
	}
	t.Run("ContextGPU", func(t *testing.T) {
		ctx := context.Background()
		ts := []float32{999, 750.25, 500.5, 3}
		var conds [2]*ELLAConditioner
		for k := range conds {
			if conds[k], err = NewELLAConditioner(ctx, plug, opt, "a red cube", "blurry"); err != nil {
				t.Fatal(err)
			}
			defer conds[k].Close()
		}
		sched := conds[1]
		if err := sched.PrepareSchedule(ctx, ts[:3], true); err != nil {
			t.Fatal(err)
		}
		var ptr uint64
		for _, step := range ts { // the last one is off the schedule
			wt, err := conds[0].ContextGPU(ctx, step, true)
			if err != nil {
				t.Fatal(err)
			}
			want, err := wt.Download()
			if err != nil {
				t.Fatal(err)
			}
			gt, err := sched.ContextGPU(ctx, step, true)
			if err != nil {
				t.Fatal(err)
			}
			if ptr == 0 {
				ptr = gt.Buf.Ptr
			} else if gt.Buf.Ptr != ptr {
				t.Errorf("t=%v: context buffer moved", step)
			}
			got, err := gt.Download()
			if err != nil {
				t.Fatal(err)
			}
			if r := nn.RelL2(got.Data, want.Data); r > 1e-6 || math.IsNaN(r) {
				t.Fatalf("t=%v: ContextGPU rel L2 %.3g > 1e-6 from the per-step device path", step, r)
			}
		}
		if st := sched.Stats(); st.ScheduleCalls != 2 || st.StepCalls != 1 || st.Scheduled != 3 {
			t.Errorf("stats %+v: want 2 batched calls, 1 step call (off the schedule), 3 served", st)
		}
	})
}
