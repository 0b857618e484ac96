// blockweights.go maps a checkpoint key to its lora-block-weight factor
// (spec §12 item 1; hako-mikan/sd-webui-lora-block-weight,
// scripts/lora_block_weight.py).
//
// Convention: a vector of 26 values is
//
//	BASE, IN00..IN11, M00, OUT00..OUT11
//
// (the LyCORIS vector); 17 values are the LoRA vector
//
//	BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03..OUT11
//
// (the blocks that hold transformers), expanded to 26 with 1 for the blocks
// it omits, as lora_block_weight.py does. BASE is the text encoder, INxx =
// ldm input_blocks.xx, M00 = middle_block, OUTxx = output_blocks.xx. The
// factor multiplies the strength (m = base x block weight, spec §10.3);
// time_embed.* and out.* keep the plain U-Net strength. It does not parse
// presets or A1111 prompt syntax.
package lora

import (
	"fmt"
	"strconv"
	"strings"
)

// BlockNames26 names the entries of an expanded block-weight vector.
var BlockNames26 = func() []string {
	n := []string{"BASE"}
	for i := 0; i < 12; i++ {
		n = append(n, fmt.Sprintf("IN%02d", i))
	}
	n = append(n, "M00")
	for i := 0; i < 12; i++ {
		n = append(n, fmt.Sprintf("OUT%02d", i))
	}
	return n
}()

// BlockNames17 names the entries of the 17-value LoRA vector.
var BlockNames17 = []string{"BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
	"OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"}

// ExpandBlockWeights returns the 26-value vector for a 17- or 26-value one;
// nil stays nil (every factor 1).
func ExpandBlockWeights(v []float64) ([]float64, error) {
	switch len(v) {
	case 0:
		return nil, nil
	case 26:
		return v, nil
	case 17:
		out := make([]float64, 26)
		for i := range out {
			out[i] = 1
		}
		for i, name := range BlockNames17 {
			out[blockSlot(name)] = v[i]
		}
		return out, nil
	}
	return nil, fmt.Errorf("lora: a block-weight vector has 17 (LoRA: %s) or 26 (LyCORIS) values, got %d",
		strings.Join(BlockNames17, ","), len(v))
}

func blockSlot(name string) int {
	for i, n := range BlockNames26 {
		if n == name {
			return i
		}
	}
	return -1
}

// blockOf returns the slot of a checkpoint module in the 26-value vector,
// or -1 for U-Net modules outside every block (time_embed, out).
func blockOf(cm *CkptModule) int {
	if cm.Component == TextEncoder {
		return 0
	}
	p := strings.Split(cm.Local, ".")
	if len(p) < 2 {
		return -1
	}
	n, err := strconv.Atoi(p[1])
	if err != nil || n < 0 {
		return -1
	}
	switch p[0] {
	case "input_blocks":
		if n < 12 {
			return 1 + n
		}
	case "middle_block":
		return 13
	case "output_blocks":
		if n < 12 {
			return 14 + n
		}
	}
	return -1
}
