// t5_fp16.go emulates the rounding of an all-fp16 PyTorch T5 encoder in
// float32 arithmetic (spec ella-and-t5 §7 plan b): values are rounded to the
// nearest fp16 where PyTorch stores an fp16 tensor, and the residual stream
// gets HF's fp16 clamp. It does not emulate fp16 arithmetic inside kernels
// (matmul accumulation and softmax stay float32, as on a GPU), nor the
// rounding of attention scores before the softmax.
package models

import (
	"math"

	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

const (
	f16Max      = 65504         // torch.finfo(torch.float16).max
	f16ClampInf = f16Max - 1000 // modeling_t5.py clamp value when an inf appeared
)

// roundF16 rounds v to the nearest fp16 value (overflow gives ±inf).
func roundF16(v float32) float32 {
	var out [1]float32
	safetensors.F16ToF32(out[:], []uint16{safetensors.F32ToF16(v)})
	return out[0]
}

// roundTensorF16 rounds every element of t to fp16 in place.
func roundTensorF16(t *nn.Tensor) {
	const chunk = 4096
	var h [chunk]uint16
	for off := 0; off < len(t.Data); off += chunk {
		seg := t.Data[off:min(off+chunk, len(t.Data))]
		for i, v := range seg {
			h[i] = safetensors.F32ToF16(v)
		}
		safetensors.F16ToF32(seg, h[:len(seg)])
	}
}

// clampF16 applies modeling_t5.py's fp16 clamp to the whole tensor:
// clamp_value = finfo.max - 1000 if any element is ±inf, else finfo.max.
func clampF16(t *nn.Tensor) {
	lim := float32(f16Max)
	for _, v := range t.Data {
		if math.IsInf(float64(v), 0) {
			lim = f16ClampInf
			break
		}
	}
	for i, v := range t.Data {
		t.Data[i] = min(max(v, -lim), lim) // NaN stays NaN as in torch.clamp
	}
}
