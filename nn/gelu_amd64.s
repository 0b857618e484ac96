// gelu_amd64.s: AVX-512 exact (erf) GELU, alone and gating another slice
// (GEGLU's hidden * gelu(gate)). erf is a float32 rational approximation
// on [-4, 4] (odd degree-13 numerator over degree-8 denominator in x²,
// abs error about 4e-7). 1+erf cancels for very negative inputs, so the Go
// wrapper in gelu_amd64.go recomputes inputs below -1 exactly. n must be a
// positive multiple of 16; the wrapper handles tails and the CPU check.

#include "textflag.h"

#define GELUCONSTS \
	MOVL $0xc0800000, AX; VPBROADCASTD AX, Z16; \
	MOVL $0x40800000, AX; VPBROADCASTD AX, Z17; \
	MOVL $0xaf95df0b, AX; VPBROADCASTD AX, Z18; \
	MOVL $0x32edffee, AX; VPBROADCASTD AX, Z19; \
	MOVL $0xb60cff51, AX; VPBROADCASTD AX, Z20; \
	MOVL $0xb86ec2d2, AX; VPBROADCASTD AX, Z21; \
	MOVL $0xba40ac63, AX; VPBROADCASTD AX, Z22; \
	MOVL $0xbb41a1f6, AX; VPBROADCASTD AX, Z23; \
	MOVL $0xbc83dbd4, AX; VPBROADCASTD AX, Z24; \
	MOVL $0xb77460cd, AX; VPBROADCASTD AX, Z25; \
	MOVL $0xb95fbd29, AX; VPBROADCASTD AX, Z26; \
	MOVL $0xbadc924e, AX; VPBROADCASTD AX, Z27; \
	MOVL $0xbbf19bf8, AX; VPBROADCASTD AX, Z28; \
	MOVL $0xbc69b6a7, AX; VPBROADCASTD AX, Z29; \
	MOVL $0x3f3504f3, AX; VPBROADCASTD AX, Z30; \
	MOVL $0x3f000000, AX; VPBROADCASTD AX, Z31; \
	MOVL $0x3f800000, AX; VPBROADCASTD AX, Z15

// GELU computes Z0 = gelu(Z8) using Z1-Z3 as scratch.
#define GELU \
	VMULPS Z30, Z8, Z0; \
	VMAXPS Z16, Z0, Z0; \
	VMINPS Z17, Z0, Z0; \
	VMULPS Z0, Z0, Z1; \
	VMOVAPS Z18, Z2; \
	VFMADD213PS Z19, Z1, Z2; \
	VFMADD213PS Z20, Z1, Z2; \
	VFMADD213PS Z21, Z1, Z2; \
	VFMADD213PS Z22, Z1, Z2; \
	VFMADD213PS Z23, Z1, Z2; \
	VFMADD213PS Z24, Z1, Z2; \
	VMULPS Z0, Z2, Z2; \
	VMOVAPS Z25, Z3; \
	VFMADD213PS Z26, Z1, Z3; \
	VFMADD213PS Z27, Z1, Z3; \
	VFMADD213PS Z28, Z1, Z3; \
	VFMADD213PS Z29, Z1, Z3; \
	VDIVPS Z3, Z2, Z0; \
	VADDPS Z15, Z0, Z0; \
	VMULPS Z8, Z0, Z0; \
	VMULPS Z31, Z0, Z0

// func vecGELUAVX512(dst, src *float32, n int)
TEXT ·vecGELUAVX512(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	GELUCONSTS
geluloop:
	VMOVUPS (SI), Z8
	GELU
	VMOVUPS Z0, (DI)
	ADDQ $64, SI
	ADDQ $64, DI
	SUBQ $16, CX
	JNE geluloop
	VZEROUPPER
	RET

// func vecGEGLUAVX512(dst, h, gate *float32, n int)
// dst = h * gelu(gate).
TEXT ·vecGEGLUAVX512(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ h+8(FP), DX
	MOVQ gate+16(FP), SI
	MOVQ n+24(FP), CX
	GELUCONSTS
gegluloop:
	VMOVUPS (SI), Z8
	GELU
	VMULPS (DX), Z0, Z0
	VMOVUPS Z0, (DI)
	ADDQ $64, SI
	ADDQ $64, DX
	ADDQ $64, DI
	SUBQ $16, CX
	JNE gegluloop
	VZEROUPPER
	RET
