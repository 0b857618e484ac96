// vec_amd64.s: AVX-512 loops for the softmax and activation hot paths
// (row max, exp(x-m) with its sum, y = x*s, affine, SiLU of an affine).
// They process n elements, n a positive multiple of 16; the Go wrappers in
// vec_amd64.go do the tails and the CPU check. exp is the float32 Cephes
// polynomial of fastmath.go, with VSCALEFPS for the 2^n step (results that
// underflow become 0 or denormals rather than being flushed).

#include "textflag.h"

// EXPCONSTS loads the exp constants into Z16-Z27.
#define EXPCONSTS \
	MOVL $0xc2aeac4f, AX; \
	VPBROADCASTD AX, Z16; \
	MOVL $0x42b17217, AX; \
	VPBROADCASTD AX, Z17; \
	MOVL $0x3fb8aa3b, AX; \
	VPBROADCASTD AX, Z18; \
	MOVL $0x3f318000, AX; \
	VPBROADCASTD AX, Z19; \
	MOVL $0xb95e8083, AX; \
	VPBROADCASTD AX, Z20; \
	MOVL $0x39506967, AX; \
	VPBROADCASTD AX, Z21; \
	MOVL $0x3ab743ce, AX; \
	VPBROADCASTD AX, Z22; \
	MOVL $0x3c088908, AX; \
	VPBROADCASTD AX, Z23; \
	MOVL $0x3d2aa9c1, AX; \
	VPBROADCASTD AX, Z24; \
	MOVL $0x3e2aaaaa, AX; \
	VPBROADCASTD AX, Z25; \
	MOVL $0x3f000000, AX; \
	VPBROADCASTD AX, Z26; \
	MOVL $0x3f800000, AX; \
	VPBROADCASTD AX, Z27

// EXP computes Z0 = exp(Z0) using Z1-Z3 as scratch.
#define EXP \
	VMAXPS Z16, Z0, Z0; \
	VMINPS Z17, Z0, Z0; \
	VMULPS Z18, Z0, Z1; \
	VRNDSCALEPS $0, Z1, Z1; \
	VFNMADD231PS Z19, Z1, Z0; \
	VFNMADD231PS Z20, Z1, Z0; \
	VMOVAPS Z21, Z2; \
	VFMADD213PS Z22, Z0, Z2; \
	VFMADD213PS Z23, Z0, Z2; \
	VFMADD213PS Z24, Z0, Z2; \
	VFMADD213PS Z25, Z0, Z2; \
	VFMADD213PS Z26, Z0, Z2; \
	VMULPS Z0, Z0, Z3; \
	VFMADD213PS Z0, Z3, Z2; \
	VADDPS Z27, Z2, Z2; \
	VSCALEFPS Z1, Z2, Z0

// func vecMaxAVX512(x *float32, n int) float32
TEXT ·vecMaxAVX512(SB), NOSPLIT, $0-20
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	VMOVUPS (SI), Z0
	ADDQ $64, SI
	SUBQ $16, CX
	JEQ maxdone
maxloop:
	VMAXPS (SI), Z0, Z0
	ADDQ $64, SI
	SUBQ $16, CX
	JNE maxloop
maxdone:
	VEXTRACTF32X8 $1, Z0, Y1
	VMAXPS Y1, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VMAXPS X1, X0, X0
	VPERMILPS $0x4e, X0, X1
	VMAXPS X1, X0, X0
	VPERMILPS $0xb1, X0, X1
	VMAXPS X1, X0, X0
	VZEROUPPER
	MOVSS X0, ret+16(FP)
	RET

// func vecExpSubSumAVX512(x *float32, n int, m float32) float32
TEXT ·vecExpSubSumAVX512(SB), NOSPLIT, $0-28
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	VBROADCASTSS m+16(FP), Z5
	EXPCONSTS
	VXORPS Z4, Z4, Z4
esloop:
	VMOVUPS (SI), Z0
	VSUBPS Z5, Z0, Z0
	EXP
	VMOVUPS Z0, (SI)
	VADDPS Z0, Z4, Z4
	ADDQ $64, SI
	SUBQ $16, CX
	JNE esloop
	VEXTRACTF32X8 $1, Z4, Y1
	VADDPS Y1, Y4, Y4
	VEXTRACTF128 $1, Y4, X1
	VADDPS X1, X4, X4
	VPERMILPS $0x4e, X4, X1
	VADDPS X1, X4, X4
	VPERMILPS $0xb1, X4, X1
	VADDPS X1, X4, X4
	VZEROUPPER
	MOVSS X4, ret+24(FP)
	RET

// func vecScaleAVX512(x *float32, n int, s float32)
TEXT ·vecScaleAVX512(SB), NOSPLIT, $0-20
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	VBROADCASTSS s+16(FP), Z5
scloop:
	VMULPS (SI), Z5, Z0
	VMOVUPS Z0, (SI)
	ADDQ $64, SI
	SUBQ $16, CX
	JNE scloop
	VZEROUPPER
	RET

// func vecAffineAVX512(dst, src *float32, n int, sc, sh float32)
TEXT ·vecAffineAVX512(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	VBROADCASTSS sc+24(FP), Z5
	VBROADCASTSS sh+28(FP), Z6
afloop:
	VMOVUPS (SI), Z0
	VFMADD213PS Z6, Z5, Z0
	VMOVUPS Z0, (DI)
	ADDQ $64, SI
	ADDQ $64, DI
	SUBQ $16, CX
	JNE afloop
	VZEROUPPER
	RET

// func vecSiLUAffineAVX512(dst, src *float32, n int, sc, sh float32)
// dst = y / (1 + exp(-y)) with y = src*sc + sh.
TEXT ·vecSiLUAffineAVX512(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	VBROADCASTSS sc+24(FP), Z5
	VBROADCASTSS sh+28(FP), Z6
	EXPCONSTS
	VXORPS Z7, Z7, Z7
siloop:
	VMOVUPS (SI), Z8
	VFMADD213PS Z6, Z5, Z8
	VSUBPS Z8, Z7, Z0
	EXP
	VADDPS Z27, Z0, Z0
	VDIVPS Z0, Z8, Z8
	VMOVUPS Z8, (DI)
	ADDQ $64, SI
	ADDQ $64, DI
	SUBQ $16, CX
	JNE siloop
	VZEROUPPER
	RET
