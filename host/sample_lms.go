// sample_lms.go is k-diffusion's sample_lms (linear multistep, order 4) with
// its coefficients: the integral over [sigma_i, sigma_{i+1}] of the Lagrange
// basis polynomial through the last `order` sigmas. k-diffusion integrates
// these with scipy's quad; the integrand is a polynomial of degree order-1 <= 3,
// so a 4-point Gauss-Legendre rule integrates it exactly and gives the same
// numbers to rounding. It does not support orders above 4.
package host

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
)

// lmsOrder is the order k-diffusion's sample_lms defaults to.
const lmsOrder = 4

// gauss-Legendre nodes and weights on [-1, 1], exact for degree <= 7.
var (
	glNodes   = [4]float64{-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526}
	glWeights = [4]float64{0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538}
)

// LinearMultistepCoeff is k-diffusion linear_multistep_coeff(order, t, i, j):
// the integral from t[i] to t[i+1] of prod_{k != j} (tau - t[i-k]) / (t[i-j] - t[i-k]).
func LinearMultistepCoeff(order int, t []float64, i, j int) (float64, error) {
	if order-1 > i {
		return 0, fmt.Errorf("lms: order %d too high for step %d", order, i)
	}
	if order > len(glNodes) {
		return 0, fmt.Errorf("lms: order %d above %d", order, len(glNodes))
	}
	fn := func(tau float64) float64 {
		prod := 1.0
		for k := range order {
			if k == j {
				continue
			}
			prod *= (tau - t[i-k]) / (t[i-j] - t[i-k])
		}
		return prod
	}
	a, b := t[i], t[i+1]
	half, mid := (b-a)/2, (a+b)/2
	sum := 0.0
	for q, node := range glNodes {
		sum += glWeights[q] * fn(mid+half*node)
	}
	return sum * half, nil
}

// SampleLMS is k-diffusion sample_lms with order 4: the derivatives of the
// last (up to) four steps combined with the coefficients above.
func SampleLMS(model Denoiser, x *nn.Tensor, sigmas []float64, opt SampleOptions) (*nn.Tensor, error) {
	if err := checkSigmas(x, sigmas); err != nil {
		return nil, err
	}
	var ds []*nn.Tensor // newest last, each [B, C, H, W]
	for i := range len(sigmas) - 1 {
		denoised, err := denoise(model, x, sigmas[i]) // [B, C, H, W]
		if err != nil {
			return nil, err
		}
		ds = append(ds, toD(x, denoised, sigmas[i]))
		if len(ds) > lmsOrder {
			ds = ds[1:]
		}
		order := min(i+1, lmsOrder)
		next := make([]float64, len(x.Data))
		for j := range next {
			next[j] = float64(x.Data[j])
		}
		for j := range order {
			c, err := LinearMultistepCoeff(order, sigmas, i, j)
			if err != nil {
				return nil, err
			}
			d := ds[len(ds)-1-j] // j-th newest derivative
			for k := range next {
				next[k] += c * float64(d.Data[k])
			}
		}
		out := nn.New(x.Shape...)
		for k := range next {
			out.Data[k] = float32(next[k])
		}
		x = out
		report(opt, i, sigmas, x, denoised)
	}
	return x, nil
}
