// pack_amd64.s: AVX-512 gather loops that pack a transposed operand into
// a GEMM panel: dst[l*W + j] = src[j*ld + l] for j < W (W = 16 or 32
// full rows) and l < kc. They replace a scalar transpose that costs more
// than the FMAs it feeds on narrow products. Partial panels stay in Go.

#include "textflag.h"

DATA iota32<>+0(SB)/4, $0
DATA iota32<>+4(SB)/4, $1
DATA iota32<>+8(SB)/4, $2
DATA iota32<>+12(SB)/4, $3
DATA iota32<>+16(SB)/4, $4
DATA iota32<>+20(SB)/4, $5
DATA iota32<>+24(SB)/4, $6
DATA iota32<>+28(SB)/4, $7
DATA iota32<>+32(SB)/4, $8
DATA iota32<>+36(SB)/4, $9
DATA iota32<>+40(SB)/4, $10
DATA iota32<>+44(SB)/4, $11
DATA iota32<>+48(SB)/4, $12
DATA iota32<>+52(SB)/4, $13
DATA iota32<>+56(SB)/4, $14
DATA iota32<>+60(SB)/4, $15
GLOBL iota32<>(SB), RODATA|NOPTR, $64

// func packT32AVX512(dst, src *float32, ld, kc int)
TEXT ·packT32AVX512(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ ld+16(FP), AX
	MOVQ kc+24(FP), CX
	VMOVDQU32 iota32<>(SB), Z1
	VPBROADCASTD AX, Z2
	VPMULLD Z2, Z1, Z1
	MOVQ AX, R9
	SHLQ $6, R9
	ADDQ SI, R9
p32loop:
	KXNORW K1, K1, K1
	VGATHERDPS (SI)(Z1*4), K1, Z3
	KXNORW K2, K2, K2
	VGATHERDPS (R9)(Z1*4), K2, Z4
	VMOVUPS Z3, (DI)
	VMOVUPS Z4, 64(DI)
	ADDQ $4, SI
	ADDQ $4, R9
	ADDQ $128, DI
	DECQ CX
	JNE p32loop
	VZEROUPPER
	RET

// func packT16AVX512(dst, src *float32, ld, kc int)
TEXT ·packT16AVX512(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ ld+16(FP), AX
	MOVQ kc+24(FP), CX
	VMOVDQU32 iota32<>(SB), Z1
	VPBROADCASTD AX, Z2
	VPMULLD Z2, Z1, Z1
p16loop:
	KXNORW K1, K1, K1
	VGATHERDPS (SI)(Z1*4), K1, Z3
	VMOVUPS Z3, (DI)
	ADDQ $4, SI
	ADDQ $64, DI
	DECQ CX
	JNE p16loop
	VZEROUPPER
	RET
