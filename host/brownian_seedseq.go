// brownian_seedseq.go reproduces numpy's np.random.SeedSequence as far as
// torchsde's Brownian interval uses it: hashing an entropy integer and a
// spawn key of non-negative integers into a pool of 32-bit words, then
// generate_state(n) with dtype uint32. torchsde seeds every interval of its
// Brownian tree this way, so the torch generator seeds (and hence the noise)
// match k-diffusion's for the same seed. It does not implement spawn(),
// string or array entropy, or 64-bit output words.
package host

// SeedSequence mixing constants (numpy/random/bit_generator.pyx).
const (
	ssInitA   = 0x43b0d7e5
	ssMultA   = 0x931e8875
	ssInitB   = 0x8b51f9dd
	ssMultB   = 0x58f38ded
	ssMixMulL = 0xca01f9dd
	ssMixMulR = 0x4973f715
	ssXShift  = 16
)

// uint32Words splits n into little-endian 32-bit words, as numpy's
// _int_to_uint32_array does (0 is one zero word).
func uint32Words(n uint64) []uint32 {
	if n == 0 {
		return []uint32{0}
	}
	var w []uint32
	for ; n > 0; n >>= 32 {
		w = append(w, uint32(n))
	}
	return w
}

// seedSequenceState is SeedSequence(entropy=entropy, spawn_key=spawnKey,
// pool_size=pool).generate_state(n) with uint32 words.
func seedSequenceState(entropy uint64, spawnKey []uint64, pool, n int) []uint32 {
	run := uint32Words(entropy)
	var spawn []uint32
	for _, k := range spawnKey {
		spawn = append(spawn, uint32Words(k)...)
	}
	if len(spawn) > 0 && len(run) < pool {
		// numpy pads the run entropy with zeros to the pool size so that
		// spawn keys cannot collide with longer entropy.
		run = append(run, make([]uint32, pool-len(run))...)
	}
	ent := append(run, spawn...)

	hashConst := uint32(ssInitA)
	hashmix := func(v uint32) uint32 {
		v ^= hashConst
		hashConst *= ssMultA
		v *= hashConst
		return v ^ v>>ssXShift
	}
	mix := func(x, y uint32) uint32 {
		r := ssMixMulL*x - ssMixMulR*y
		return r ^ r>>ssXShift
	}

	mixer := make([]uint32, pool)
	for i := range mixer {
		var v uint32
		if i < len(ent) {
			v = ent[i]
		}
		mixer[i] = hashmix(v)
	}
	for src := range mixer {
		for dst := range mixer {
			if src != dst {
				mixer[dst] = mix(mixer[dst], hashmix(mixer[src]))
			}
		}
	}
	for src := pool; src < len(ent); src++ {
		for dst := range mixer {
			mixer[dst] = mix(mixer[dst], hashmix(ent[src]))
		}
	}

	out := make([]uint32, n)
	hashConst = ssInitB
	for i := range out {
		v := mixer[i%pool] ^ hashConst
		hashConst *= ssMultB
		v *= hashConst
		out[i] = v ^ v>>ssXShift
	}
	return out
}
