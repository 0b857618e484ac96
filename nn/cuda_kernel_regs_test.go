// cuda_kernel_regs_test.go: register and stack use of nn's CUDA kernels as
// NVRTC compiles them for sm_90, read from the CUBIN (no GPU needed):
// each kernel's register count (EIATTR_REGCOUNT in .nv.info) and its
// stack frame (EIATTR_FRAME_SIZE: local memory per thread, where spills
// and indexed local arrays go). Runs when
// SDBRIDGE_CUDA_LIB_DIR names a folder with libnvrtc (skips otherwise);
// fails when a kernel needs more registers than its __launch_bounds__
// allow an SM to hold, or when a flash attention kernel has a stack frame.
package nn

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/sdbridge/sdbridge/cuda"
)

// kernelResources is what the CUBIN says about one kernel.
type kernelResources struct {
	regs, frame int
}

// cubinResources reads every kernel's register count and stack frame.
func cubinResources(img []byte) (map[string]kernelResources, error) {
	// CUBINs carry NVIDIA's own ELF version numbers (the CUDA ABI version
	// in e_ident[EI_VERSION] and e_version): set them to 1 for debug/elf.
	img = bytes.Clone(img)
	if len(img) > 24 {
		img[elf.EI_VERSION] = byte(elf.EV_CURRENT)
		binary.LittleEndian.PutUint32(img[20:], uint32(elf.EV_CURRENT))
	}
	f, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		return nil, err
	}
	syms, err := f.Symbols()
	if err != nil {
		return nil, err
	}
	out := map[string]kernelResources{}
	for _, s := range f.Sections {
		if name, ok := strings.CutPrefix(s.Name, ".text."); ok {
			out[name] = kernelResources{}
		}
	}
	// .nv.info: records of (format u8, attribute u8, size u16, payload);
	// EIATTR_FRAME_SIZE (0x11) and EIATTR_REGCOUNT (0x2f) have the payload
	// (symbol index u32, value u32).
	if s := f.Section(".nv.info"); s != nil {
		data, err := s.Data()
		if err != nil {
			return nil, err
		}
		for p := 0; p+4 <= len(data); {
			format, attr := data[p], data[p+1]
			size := int(binary.LittleEndian.Uint16(data[p+2:]))
			if format != 0x04 { // only EIFMT_SVAL records carry a size
				p += 4
				continue
			}
			if (attr == 0x11 || attr == 0x2f) && size == 8 && p+12 <= len(data) {
				idx := int(binary.LittleEndian.Uint32(data[p+4:]))
				v := int(binary.LittleEndian.Uint32(data[p+8:]))
				if idx >= 1 && idx <= len(syms) {
					name := syms[idx-1].Name
					kr := out[name]
					if attr == 0x11 {
						kr.frame = v
					} else {
						kr.regs = v
					}
					out[name] = kr
				}
			}
			p += 4 + size
		}
	}
	return out, nil
}

func TestKernelRegistersNVRTC(t *testing.T) {
	n, err := cuda.LoadNVRTC()
	if err != nil {
		t.Skipf("no NVRTC here (set SDBRIDGE_CUDA_LIB_DIR): %v", err)
	}
	target, err := n.Target(90)
	if err != nil {
		t.Fatal(err)
	}
	compiled := map[string]map[string]kernelResources{} // per file
	for _, tc := range []struct {
		file    string
		prefix  string
		maxRegs int  // 65536 / (threads per block of the launch)
		noFrame bool // the kernel must not use local memory
	}{
		{"attention.cu", "flash_attn_f16_wide_d512", 255, true},
		{"attention.cu", "flash_attn_f16_wide_d256", 255, true},
		{"attention.cu", "flash_attn_wide_simt", 255, true},
		{"attention.cu", "flash_attn_f16_d", 255, false},
		{"attention.cu", "flash_attn_simt", 255, true},
		{"norm.cu", "group_norm", 64, false},
		{"conv.cu", "im2col", 255, true},
		{"conv.cu", "conv_igemm_f16", 255, true},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			res := compiled[tc.file]
			if res == nil {
				src, err := cuda.KernelSource(tc.file)
				if err != nil {
					t.Fatal(err)
				}
				img, err := n.Compile(tc.file, src, target)
				if err != nil {
					t.Fatal(err)
				}
				if res, err = cubinResources(img); err != nil {
					t.Fatal(err)
				}
				compiled[tc.file] = res
			}
			found := 0
			for name, kr := range res {
				if !strings.HasPrefix(name, tc.prefix) {
					continue
				}
				found++
				t.Logf("%s: %d registers, %d bytes stack frame", name, kr.regs, kr.frame)
				if kr.regs == 0 || kr.regs > tc.maxRegs {
					t.Errorf("%s: %d registers, want 1..%d", name, kr.regs, tc.maxRegs)
				}
				if tc.noFrame && kr.frame != 0 {
					t.Errorf("%s: %d bytes of stack frame (spills or local arrays)", name, kr.frame)
				}
			}
			if found == 0 {
				t.Fatalf("no kernel named %s* in the CUBIN of %s", tc.prefix, tc.file)
			}
		})
	}
}
