// synth.go writes SD1.5-structured checkpoints with random weights (the
// demo's tiny model, the benchmarks' real-size one). Weights are drawn so a
// forward pass stays finite: norm scales 1, biases small, matrices uniform in
// ±1/sqrt(fan_in). It streams through the safetensors writer and never holds
// the file in memory. It is not a training initialisation of any paper.
package models

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"strings"

	"github.com/sdbridge/sdbridge/safetensors"
)

// SD15AlphasCumprod is the SD1.5 schedule: betas = linspace(0.00085^0.5,
// 0.012^0.5, 1000)^2, alphas_cumprod = cumprod(1-betas), kept in float32.
func SD15AlphasCumprod() []float32 {
	out := make([]float32, 1000)
	lo, hi := math.Sqrt(0.00085), math.Sqrt(0.012)
	prod := 1.0
	for i := range out {
		b := lo + (hi-lo)*float64(i)/999
		prod *= 1 - b*b
		out[i] = float32(prod)
	}
	return out
}

// rng is a small splitmix64 generator: fast, seedable, good enough for weights.
type rng uint64

func (r *rng) next() uint64 {
	*r += 0x9e3779b97f4a7c15
	z := uint64(*r)
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// uniform returns a value in [-1, 1).
func (r *rng) uniform() float32 { return float32(r.next()>>40)/float32(1<<23) - 1 }

// WriteRandom writes a checkpoint for specs to path with random weights.
func WriteRandom(path string, specs []safetensors.Spec, seed uint64, metadata map[string]string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("models: %w", err)
	}
	defer f.Close()
	w, err := safetensors.NewWriter(f, specs, metadata)
	if err != nil {
		return fmt.Errorf("models: writing %s: %w", path, err)
	}
	r := rng(seed)
	var buf []byte
	for _, s := range specs {
		n := 1
		for _, d := range s.Shape {
			n *= d
		}
		vals := randomValues(&r, s, n)
		buf = encode(buf[:0], s.DType, vals)
		if err := w.WriteTensor(s.Name, buf); err != nil {
			return fmt.Errorf("models: writing %s: %w", path, err)
		}
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("models: writing %s: %w", path, err)
	}
	return f.Close()
}

func randomValues(r *rng, s safetensors.Spec, n int) []float64 {
	vals := make([]float64, n)
	switch {
	case s.Name == "alphas_cumprod":
		for i, a := range SD15AlphasCumprod() {
			vals[i] = float64(a)
		}
	case strings.HasSuffix(s.Name, "position_ids"):
		for i := range vals {
			vals[i] = float64(i)
		}
	case len(s.Shape) == 1 && strings.HasSuffix(s.Name, ".weight"): // norm scales
		for i := range vals {
			vals[i] = 1 + 0.1*float64(r.uniform())
		}
	case len(s.Shape) == 1: // biases
		for i := range vals {
			vals[i] = 0.02 * float64(r.uniform())
		}
	default:
		fanIn := n / s.Shape[0]
		a := 1 / math.Sqrt(float64(fanIn))
		if strings.Contains(s.Name, "embedding") {
			a = 0.02
		}
		for i := range vals {
			vals[i] = a * float64(r.uniform())
		}
	}
	return vals
}

func encode(buf []byte, dt safetensors.DType, vals []float64) []byte {
	for _, v := range vals {
		switch dt {
		case safetensors.F16:
			buf = binary.LittleEndian.AppendUint16(buf, safetensors.F32ToF16(float32(v)))
		case safetensors.BF16:
			buf = binary.LittleEndian.AppendUint16(buf, safetensors.F32ToBF16(float32(v)))
		case safetensors.F32:
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(float32(v)))
		case safetensors.I64:
			buf = binary.LittleEndian.AppendUint64(buf, uint64(int64(v)))
		default:
			panic(fmt.Sprintf("models: synth cannot write %s", dt))
		}
	}
	return buf
}
