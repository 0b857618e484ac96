// ella_device_test.go: ELLAConditioner with device context buffers
// (ELLAOptions.GPU) driving the real ELLA plugin code in process (refs
// bound to the host's device arenas as the SDK binds them), on the golden
// tiny T5 and connector, against the stand-in CUDA libraries and their CUDA
// C emulator in a child process: ContextGPU and Context equal the host-
// memory conditioner's contexts (rel L2 <= 1e-5, F32), in flexible and
// concat mode (CLIP rows placed once after the ELLA rows).
package host

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sdbridge/sdbridge/cuda/cudatest"
	"github.com/sdbridge/sdbridge/golden"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/ella"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// inProcessELLA serves the ella plugin in this process, binding each ref
// to the host arena it names (memfd or device) and synchronising device
// outputs before returning, as the SDK does.
type inProcessELLA struct{ p *ella.Plugin }

func (inProcessELLA) Name() string { return "ella-in-process" }

func (f inProcessELLA) EncodePrompt(ctx context.Context, req *sdk.EncodePromptRequest) (*sdk.EncodePromptResponse, error) {
	return f.p.EncodePrompt(ctx, req)
}

func (f inProcessELLA) ReleasePrompt(ctx context.Context, h string) error {
	_, err := f.p.ReleasePrompt(ctx, &sdk.ReleasePromptRequest{Handle: h})
	return err
}

func (f inProcessELLA) Conditioning(ctx context.Context, req *sdk.ConditioningRequest) (*sdk.ConditioningResponse, error) {
	a, ok := lookupArena(req.Out.Arena)
	if !ok {
		return nil, fmt.Errorf("tensor %q: unknown arena %d", req.Out.Name, req.Out.Arena)
	}
	var out *sdk.Tensor
	var err error
	if a.OnDevice() {
		out, err = sdk.BindDeviceTensor(req.Out.TensorRef, a.DeviceBuffer())
	} else {
		out, err = sdk.BindTensor(req.Out.TensorRef, a.Bytes())
	}
	if err != nil {
		return nil, err
	}
	r := *req
	r.Out = out
	resp, err := f.p.Conditioning(ctx, &r)
	if err == nil && a.OnDevice() {
		err = a.DeviceBuffer().Device().Synchronize()
	}
	return resp, err
}

// wideCLIP returns [1, 77, 128] with values from the prompt's length.
type wideCLIP struct{}

func (wideCLIP) EncodePrompt(_ context.Context, p string) (*nn.Tensor, error) {
	t := nn.New(1, 77, 128) // [1, 77, D]
	for i := range t.Data {
		t.Data[i] = float32(math.Sin(float64(i*len(p)) * 0.01))
	}
	return t, nil
}

func TestELLAConditionerOnDevice(t *testing.T) {
	dir := golden.Dir()
	opt := ELLAOptions{
		ELLA: filepath.Join(dir, "models", "ella-tiny.safetensors"), T5: filepath.Join(dir, "models", "t5-tiny"),
		T5Tokenizer: filepath.Join(dir, "data", "t5", "spiece.model"), Heads: 8, ContextDim: 128,
	}
	if _, err := ella.Load(ella.Config{ELLAPath: opt.ELLA, T5Dir: opt.T5, T5Tokenizer: opt.T5Tokenizer, Heads: 8}); err != nil {
		t.Skipf("golden ELLA models not available: %v", err)
	}
	if !cudatest.InChild() {
		cudatest.RunChild(t, "TestELLAConditionerOnDevice", cudatest.Build(t))
		return
	}
	g, err := nn.OpenGPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx := context.Background()
	plug := inProcessELLA{ella.New(nil)}
	for _, mode := range []string{ELLAFlexible, ELLAConcat} {
		t.Run(mode, func(t *testing.T) {
			o := opt
			o.Mode = mode
			o.CLIP = wideCLIP{}
			host, err := NewELLAConditioner(ctx, plug, o, "a red cube", "blurry")
			if err != nil {
				t.Fatal(err)
			}
			defer host.Close()
			o.GPU = g
			dev, err := NewELLAConditioner(ctx, plug, o, "a red cube", "blurry")
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			for _, step := range []struct {
				t    float32
				cond bool
			}{{999, true}, {999, false}, {500.5, true}} {
				want, err := host.Context(ctx, step.t, step.cond)
				if err != nil {
					t.Fatal(err)
				}
				gt, err := dev.ContextGPU(ctx, step.t, step.cond)
				if err != nil {
					t.Fatal(err)
				}
				got, err := gt.Download()
				if err != nil {
					t.Fatal(err)
				}
				compat, err := dev.Context(ctx, step.t, step.cond)
				if err != nil {
					t.Fatal(err)
				}
				for _, c := range []*nn.Tensor{got, compat} {
					if !slices.Equal(c.Shape, want.Shape) {
						t.Fatalf("t=%v cond=%v: shape %v, want %v", step.t, step.cond, c.Shape, want.Shape)
					}
					if r := nn.RelL2(c.Data, want.Data); r > 1e-5 || math.IsNaN(r) {
						t.Fatalf("t=%v cond=%v: rel L2 %.3g > 1e-5", step.t, step.cond, r)
					}
				}
			}
			if st := dev.Stats(); st.Calls != 3 || st.Reused != 3 {
				t.Fatalf("device conditioner: %d plugin calls, %d reused; want 3 and 3 (Context after ContextGPU reuses the step)", st.Calls, st.Reused)
			}
		})
	}
}
