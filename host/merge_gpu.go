// merge_gpu.go: 'sdbridge merge --device cuda': the merge of one touched
// tensor on the GPU. The original values (widened to float32 on the CPU,
// as the CPU merge does) are uploaded to a float32 device buffer, merged
// there by lora.Plan.ApplyDevice (cuBLAS products and lora.cu kernels,
// fp32 throughout; ops without a GPU path run exactly on the CPU) and
// downloaded for the one cast to the output dtype. The result equals the
// CPU merge up to float32 summation order.
//
// It does not keep the checkpoint or the factors on the device between
// tensors, and it does not write from device memory.
package host

import (
	"fmt"

	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/plugins/lora"
	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// mergeOnGPU merges key into vals (its original values, [numel]) on g.
func mergeOnGPU(g *nn.GPU, plan *lora.Plan, key string, vals []float32) error {
	if g.BLAS == nil {
		return fmt.Errorf("%s: merging on the GPU needs cuBLAS", key)
	}
	buf, err := g.Dev.Alloc(4 * max(len(vals), 1)) // [numel] fp32
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	defer buf.Free()
	if err := buf.UploadFloat32(vals); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if err := plan.ApplyDevice(g.BLAS, key, buf, sdk.F32, nil); err != nil {
		return err
	}
	if err := buf.DownloadFloat32(vals); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	return nil
}
