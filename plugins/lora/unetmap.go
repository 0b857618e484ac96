// unetmap.go converts an SD 1.5 U-Net name from the single-file (ldm) layout
// to the diffusers layout, by formula (spec checkpoints-and-lora.md §6), the
// way kohya-ss/sd-scripts library/model_util.py convert_unet_state_dict_to_sd
// and ComfyUI comfy/utils.py unet_to_diffusers lay the blocks out.
//
// It works on whole dotted names and never splits on '_'. It is only used in
// the ldm -> diffusers direction: LoRA names are resolved by a forward lookup
// built from the checkpoint's own keys (aliases.go), so no inverse parser is
// needed. It assumes the SD 1.x block structure (num_res_blocks = 2, four
// levels); channel widths do not matter. It does not know the VAE or text
// encoder.
package lora

import (
	"strconv"
	"strings"
)

// resnetTails maps ldm ResBlock sub-module names to their diffusers names.
var resnetTails = [][2]string{
	{"in_layers.0", "norm1"},
	{"in_layers.2", "conv1"},
	{"emb_layers.1", "time_emb_proj"},
	{"out_layers.0", "norm2"},
	{"out_layers.3", "conv2"},
	{"skip_connection", "conv_shortcut"},
}

// LDMToDiffusers converts a U-Net name relative to "model.diffusion_model."
// (a module path such as "input_blocks.1.1.proj_in", or a full tensor name
// ending in ".weight"/".bias") to its diffusers name. ok is false for names
// outside the SD 1.x U-Net structure.
//
//	input_blocks.0.0            -> conv_in
//	input_blocks.{3i+j+1}.0     -> down_blocks.i.resnets.j           (j 0-1)
//	input_blocks.{3i+j+1}.1     -> down_blocks.i.attentions.j        (j 0-1)
//	input_blocks.{3i+3}.0.op    -> down_blocks.i.downsamplers.0.conv
//	middle_block.{0,1,2}        -> mid_block.{resnets.0,attentions.0,resnets.1}
//	output_blocks.{3i+j}.0      -> up_blocks.i.resnets.j             (j 0-2)
//	output_blocks.{3i+j}.1      -> up_blocks.i.attentions.j          (unless it is the upsampler)
//	output_blocks.{3i+2}.k.conv -> up_blocks.i.upsamplers.0.conv     (k = 1 without attention, 2 with)
//	time_embed.{0,2}            -> time_embedding.linear_{1,2}
//	out.{0,2}                   -> conv_norm_out, conv_out
func LDMToDiffusers(ldm string) (string, bool) {
	p := strings.Split(ldm, ".")
	join := func(head string, rest []string) (string, bool) {
		if len(rest) == 0 {
			return head, true
		}
		return head + "." + strings.Join(rest, "."), true
	}
	switch p[0] {
	case "time_embed":
		if len(p) < 2 {
			return "", false
		}
		switch p[1] {
		case "0":
			return join("time_embedding.linear_1", p[2:])
		case "2":
			return join("time_embedding.linear_2", p[2:])
		}
	case "out":
		if len(p) < 2 {
			return "", false
		}
		switch p[1] {
		case "0":
			return join("conv_norm_out", p[2:])
		case "2":
			return join("conv_out", p[2:])
		}
	case "input_blocks":
		n, sub, rest, ok := blockIndex(p)
		if !ok {
			return "", false
		}
		if n == 0 {
			if sub != 0 {
				return "", false
			}
			return join("conv_in", rest)
		}
		i, j := (n-1)/3, (n-1)%3
		if i > 3 {
			return "", false
		}
		switch {
		case j == 2 && sub == 0 && len(rest) > 0 && rest[0] == "op" && i < 3:
			return join("down_blocks."+itoa(i)+".downsamplers.0.conv", rest[1:])
		case j < 2 && sub == 0:
			return resnet("down_blocks."+itoa(i)+".resnets."+itoa(j), rest)
		case j < 2 && sub == 1 && i < 3:
			return join("down_blocks."+itoa(i)+".attentions."+itoa(j), rest)
		}
	case "middle_block":
		if len(p) < 2 {
			return "", false
		}
		switch p[1] {
		case "0":
			return resnet("mid_block.resnets.0", p[2:])
		case "1":
			return join("mid_block.attentions.0", p[2:])
		case "2":
			return resnet("mid_block.resnets.1", p[2:])
		}
	case "output_blocks":
		n, sub, rest, ok := blockIndex(p)
		if !ok {
			return "", false
		}
		i, j := n/3, n%3
		if i > 3 {
			return "", false
		}
		switch {
		case sub == 0:
			return resnet("up_blocks."+itoa(i)+".resnets."+itoa(j), rest)
		case j == 2 && i < 3 && len(rest) > 0 && rest[0] == "conv" && (sub == 1 || sub == 2):
			// The upsampler is the last sub-module of the level's last block:
			// index 1 when the level has no attention (up_blocks.0), else 2.
			return join("up_blocks."+itoa(i)+".upsamplers.0.conv", rest[1:])
		case sub == 1 && i > 0:
			return join("up_blocks."+itoa(i)+".attentions."+itoa(j), rest)
		}
	}
	return "", false
}

// blockIndex reads "<kind>.<n>.<sub>.rest..." with decimal n and sub.
func blockIndex(p []string) (n, sub int, rest []string, ok bool) {
	if len(p) < 3 {
		return 0, 0, nil, false
	}
	n, err1 := strconv.Atoi(p[1])
	sub, err2 := strconv.Atoi(p[2])
	if err1 != nil || err2 != nil || n < 0 || sub < 0 || p[1] != itoa(n) || p[2] != itoa(sub) {
		return 0, 0, nil, false
	}
	return n, sub, p[3:], true
}

// resnet renames a ResBlock tail (in_layers.2 -> conv1, ...) under head.
func resnet(head string, rest []string) (string, bool) {
	tail := strings.Join(rest, ".")
	for _, t := range resnetTails {
		if tail == t[0] {
			return head + "." + t[1], true
		}
		if strings.HasPrefix(tail, t[0]+".") {
			return head + "." + t[1] + tail[len(t[0]):], true
		}
	}
	return "", false
}

func itoa(i int) string { return strconv.Itoa(i) }
