// Command cudacheck is the prepared device check of the CUDA backend: it
// reports the driver, the GPU and which CUDA libraries loaded, compares
// every GPU op of nn (cuBLAS GEMMs, the NVRTC-compiled kernels) with the
// CPU implementation on fresh random inputs (max |diff| and relative L2,
// PASS/FAIL at 1e-4 for fp32), checks CUDA IPC between two processes,
// and times SGEMM and fp16 GemmEx at 4096^3, attention at [2, 4096, 320]
// with 8 heads, group norm at [2, 320, 64, 64] and a 3x3 convolution at
// that size, then checks the image models' GPU forwards (models.UNetCUDA,
// ControlNetCUDA, VAE decoder and encoder; SD1.5 layout, random weights)
// against the CPU models and times a CFG step / a decode at 512px. It
// always exits 0 so the whole log comes back; the last line is
// `cudacheck: N passed, M failed`. It does not run the golden cases.
// Build: CGO_ENABLED=0 go build -o out/cudacheck ./cuda/cmd/cudacheck (see ../../DEVCHECK.md).
// Run: ./cudacheck [-timings=false] [-ipc=false] [-unet=false] [-controlnet=false] [-vae=false]
// [-graphs=false] [-dtypes=f32,f16].
package main

import (
	"encoding/hex"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"time"

	"github.com/sdbridge/sdbridge/cuda"
	"github.com/sdbridge/sdbridge/nn"
	"github.com/sdbridge/sdbridge/safetensors"
)

var (
	start          = time.Now()
	passed, failed int
	failures       []string // names of the failed cases, for tests
	rng            *rand.Rand
)

func logf(format string, a ...any) {
	fmt.Printf("[%7.2fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, a...))
}

func main() {
	if len(os.Args) == 4 && os.Args[1] == "-ipc-child" {
		os.Exit(ipcChild(os.Args[2], os.Args[3]))
	}
	opt := options{sizes: fullSizes}
	flag.BoolVar(&opt.timings, "timings", true, "time GEMMs, attention, group norm, conv and the SD1.5 stack")
	flag.BoolVar(&opt.ipc, "ipc", true, "check CUDA IPC with a child process")
	flag.BoolVar(&opt.unet, "unet", true, "check the whole SD1.5 U-Net (random weights) and time a CFG step")
	flag.BoolVar(&opt.controlnet, "controlnet", true, "check an SD1.5 ControlNet (random weights) and time a CFG step")
	flag.BoolVar(&opt.vae, "vae", true, "check the SD1.5 VAE decoder and encoder (random weights) and time a decode")
	flag.BoolVar(&opt.graphs, "graphs", true, "check and time the U-Net as a replayed CUDA graph (UNetCUDA.Graphs)")
	dtypes := flag.String("dtypes", "f32,f16", "activation dtypes of the image model checks and timings (f32, f16)")
	flag.Parse()
	var err error
	if opt.dtypes, err = parseDTypes(*dtypes); err != nil {
		fmt.Println(err)
		os.Exit(2)
	}
	seed := uint64(time.Now().UnixNano())
	rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	logf("cudacheck: seed %d", seed)
	run(opt)
	fmt.Printf("cudacheck: %d passed, %d failed\n", passed, failed)
}

// options selects the parts of the check.
type options struct {
	timings, ipc          bool
	unet, controlnet, vae bool          // image models: check, and time with timings
	graphs                bool          // the U-Net through CUDA graphs too
	dtypes                []nn.GPUDType // activation dtypes of the image models
	sizes                 sizes
}

func run(opt options) {
	for _, s := range cuda.ProbeLibraries() {
		logf("library %s", s)
	}
	info, err := cuda.Driver()
	if err != nil {
		fail("driver", err)
		return
	}
	logf("driver %s, CUDA %d.%d, %d device(s)", info.Path, info.Version/1000, info.Version%1000/10, info.Devices)
	dev, err := cuda.Open(0)
	if err != nil {
		fail("open device 0", err)
		return
	}
	defer dev.Close()
	free, total, _ := dev.MemInfo()
	logf("device %s; VMM %v, POSIX-fd handles %v; memory free %.1f / %.1f GiB", dev, dev.VMM, dev.PosixFD, float64(free)/(1<<30), float64(total)/(1<<30))
	if n, err := cuda.LoadNVRTC(); err != nil {
		fail("nvrtc", err)
	} else {
		tgt, terr := n.Target(dev.Major*10 + dev.Minor)
		logf("nvrtc %d.%d from %s, target %s %v, supported %v", n.Major, n.Minor, n.Path, tgt, terr, n.Archs)
	}
	g := &nn.GPU{Dev: dev, Poison: true}
	if bl, err := dev.NewBLAS(); err != nil {
		fail("cublas", err)
	} else {
		g.BLAS = bl
		defer bl.Close()
		logf("cublas %s version %d", bl.Path, bl.Version)
	}
	t0 := time.Now()
	for _, f := range cuda.KernelFiles() {
		src, _ := cuda.KernelSource(f)
		if _, err := dev.CompileModule(f, src); err != nil {
			fail("compile "+f, err)
		}
	}
	logf("kernels compiled or read from cache in %.0f ms", time.Since(t0).Seconds()*1e3)

	logf("--- correctness: GPU vs CPU nn, fresh random inputs, fp32 tolerance 1e-4 (rel L2)")
	checkGemms(g)
	checkGemmEx(g)
	checkLayers(g)
	checkShapes(g)
	if opt.ipc {
		checkIPC(dev)
	}

	if opt.timings {
		logf("--- timings (median of 5 repeats after warm-up; host clock after stream sync)")
		g.Poison = false
		timeAll(g, opt.sizes)
	}
	timeSide := 0
	if opt.timings {
		timeSide = opt.sizes.hw
	}
	if opt.unet || opt.controlnet || opt.vae {
		logf("--- image models (SD1.5 layout, random weights) in %v: GPU vs CPU rel L2 <= 1e-4 (f32), 1e-2 (f16), then timed", opt.dtypes)
		// As the pipeline runs them (nn.OpenGPU): tensors from an arena,
		// Linear layers through cuBLASLt when it loads.
		g.Arena = dev.NewArena(cuda.ArenaOptions{Name: "cudacheck image models"})
		defer g.Arena.Close()
		if lt, err := dev.NewLt(); err != nil {
			logf("cublasLt: %v (Linear layers use cuBLAS)", err)
		} else {
			g.Lt = lt
			defer lt.Close()
		}
	}
	if opt.unet {
		checkAndTimeUNet(g, opt.dtypes, 16, timeSide, opt.graphs)
	}
	if opt.controlnet {
		checkAndTimeControlNet(g, opt.dtypes, 8, timeSide)
	}
	if opt.vae {
		checkAndTimeVAE(g, opt.dtypes, 8, timeSide)
	}
}

func pass(name, detail string) {
	passed++
	logf("PASS %s: %s", name, detail)
}

func fail(name string, err error) {
	failed++
	failures = append(failures, name)
	logf("FAIL %s: %v", name, err)
}

// randT returns a tensor of uniform values in [-a, a].
func randT(a float32, shape ...int) *nn.Tensor {
	t := nn.New(shape...)
	for i := range t.Data {
		t.Data[i] = (rng.Float32()*2 - 1) * a
	}
	return t
}

// compare reports max |got-want| and ||got-want|| / ||want||, failing on
// NaN (an element no kernel wrote stays NaN: outputs are poisoned).
func compare(name string, got, want []float32, tol float64) {
	if len(got) != len(want) {
		fail(name, fmt.Errorf("length %d, want %d", len(got), len(want)))
		return
	}
	var maxd, num, den float64
	worst := 0
	for i := range want {
		g, w := float64(got[i]), float64(want[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			fail(name, fmt.Errorf("element %d is %v (want %v): not written or overflowed", i, g, w))
			return
		}
		d := math.Abs(g - w)
		if d > maxd {
			maxd, worst = d, i
		}
		num += d * d
		den += w * w
	}
	rel := math.Sqrt(num / max(den, 1e-300))
	detail := fmt.Sprintf("max|d| %.3g at %d (got %.6g want %.6g), rel L2 %.3g (tol %.0e), n=%d", maxd, worst, got[worst], want[worst], rel, tol, len(want))
	if rel <= tol {
		pass(name, detail)
	} else {
		fail(name, fmt.Errorf("%s", detail))
	}
}

// guard runs one check, turning a panic into a FAIL line.
func guard(name string, fn func() error) {
	defer func() {
		if r := recover(); r != nil {
			fail(name, fmt.Errorf("panic: %v", r))
		}
	}()
	if err := fn(); err != nil {
		fail(name, err)
	}
}

// up uploads t or panics into guard.
func up(g *nn.GPU, t *nn.Tensor) *nn.GPUTensor {
	d, err := g.Upload(t)
	if err != nil {
		panic(err)
	}
	return d
}

func down(t *nn.GPUTensor) []float32 {
	c, err := t.Download()
	if err != nil {
		panic(err)
	}
	return c.Data
}

func checkGemms(g *nn.GPU) {
	for _, tc := range []struct {
		ta, tb  bool
		m, n, k int
		pad     int
	}{
		{false, false, 67, 45, 33, 0}, {false, true, 64, 77, 320, 3}, {true, false, 31, 129, 40, 1},
		{true, true, 50, 60, 70, 2}, {false, false, 512, 640, 320, 0},
	} {
		name := fmt.Sprintf("sgemm ta=%v tb=%v %dx%dx%d pad=%d", tc.ta, tc.tb, tc.m, tc.n, tc.k, tc.pad)
		guard(name, func() error {
			if g.BLAS == nil {
				return fmt.Errorf("no cuBLAS")
			}
			ar, ac, br, bc := tc.m, tc.k, tc.k, tc.n
			if tc.ta {
				ar, ac = tc.k, tc.m
			}
			if tc.tb {
				br, bc = tc.n, tc.k
			}
			lda, ldb, ldc := ac+tc.pad, bc+tc.pad, tc.n+tc.pad
			a, b, c := randT(1, ar*lda), randT(1, br*ldb), randT(1, tc.m*ldc)
			want := slices.Clone(c.Data)
			nn.Gemm(tc.ta, tc.tb, tc.m, tc.n, tc.k, 0.7, a.Data, lda, b.Data, ldb, 0.3, want, ldc)
			da, db, dc := up(g, a), up(g, b), up(g, c)
			defer da.Free()
			defer db.Free()
			defer dc.Free()
			if err := g.BLAS.Sgemm(tc.ta, tc.tb, tc.m, tc.n, tc.k, 0.7, da.Buf, lda, db.Buf, ldb, 0.3, dc.Buf, ldc); err != nil {
				return err
			}
			compare(name, down(dc), want, 1e-4)
			return nil
		})
	}
}

// toF16 rounds t to fp16 (bits) and returns the rounded values too.
func toF16(t *nn.Tensor) ([]uint16, []float32) {
	h := make([]uint16, len(t.Data))
	for i, v := range t.Data {
		h[i] = safetensors.F32ToF16(v)
	}
	r := make([]float32, len(h))
	safetensors.F16ToF32(r, h)
	return h, r
}

func checkGemmEx(g *nn.GPU) {
	m, n, k := 256, 320, 768
	name := fmt.Sprintf("gemmex fp16xfp16->fp32 %dx%dx%d (A [m,k], B^T [n,k])", m, n, k)
	guard(name, func() error {
		if g.BLAS == nil {
			return fmt.Errorf("no cuBLAS")
		}
		a, b := randT(1, m, k), randT(1, n, k)
		ah, ar := toF16(a)
		bh, br := toF16(b)
		want := make([]float32, m*n)
		nn.Gemm(false, true, m, n, k, 1, ar, k, br, k, 0, want, n)
		da, err := g.Dev.Alloc(2 * len(ah))
		if err != nil {
			return err
		}
		defer da.Free()
		db, err := g.Dev.Alloc(2 * len(bh))
		if err != nil {
			return err
		}
		defer db.Free()
		if err := da.UploadUint16(ah); err != nil {
			return err
		}
		if err := db.UploadUint16(bh); err != nil {
			return err
		}
		dc, err := g.Empty(m, n)
		if err != nil {
			return err
		}
		defer dc.Free()
		if err := g.BLAS.GemmEx(false, true, m, n, k, 1, da, k, db, k, 0, dc.Buf, n, cuda.R16F, cuda.R32F); err != nil {
			return err
		}
		compare(name, down(dc), want, 1e-4)
		return nil
	})
}

func checkLayers(g *nn.GPU) {
	guard("linear [2,77,768]->320 +bias", func() error {
		x, w, b := randT(1, 2, 77, 768), randT(0.05, 320, 768), randT(1, 320)
		want := (&nn.Linear{Weight: w, Bias: b}).Forward(x)
		dx, dw, db := up(g, x), up(g, w), up(g, b)
		defer dx.Free()
		defer dw.Free()
		defer db.Free()
		y, err := g.Linear(dx, dw, db)
		if err != nil {
			return err
		}
		defer y.Free()
		compare("linear [2,77,768]->320 +bias", down(y), want.Data, 1e-4)
		return nil
	})
	for _, tc := range []struct {
		b, ic, h, w, oc, k, s, p int
		bias                     bool
	}{
		{2, 32, 24, 20, 48, 3, 1, 1, true}, {2, 16, 17, 15, 24, 3, 2, 1, true},
		{1, 64, 16, 16, 32, 1, 1, 0, false}, {2, 8, 9, 11, 4, 3, 1, 0, true},
	} {
		name := fmt.Sprintf("conv2d [%d,%d,%d,%d] k%d s%d p%d ->%d bias=%v", tc.b, tc.ic, tc.h, tc.w, tc.k, tc.s, tc.p, tc.oc, tc.bias)
		guard(name, func() error {
			x, w := randT(1, tc.b, tc.ic, tc.h, tc.w), randT(0.1, tc.oc, tc.ic, tc.k, tc.k)
			var b *nn.Tensor
			if tc.bias {
				b = randT(1, tc.oc)
			}
			want := (&nn.Conv2d{Weight: w, Bias: b, Stride: tc.s, Padding: tc.p}).Forward(x)
			dx, dw := up(g, x), up(g, w)
			defer dx.Free()
			defer dw.Free()
			db, err := g.UploadOptional(b)
			if err != nil {
				return err
			}
			defer db.Free()
			y, err := g.Conv2d(dx, dw, db, tc.s, tc.p)
			if err != nil {
				return err
			}
			defer y.Free()
			if !slices.Equal(y.Shape, want.Shape) {
				return fmt.Errorf("shape %v, want %v", y.Shape, want.Shape)
			}
			compare(name, down(y), want.Data, 1e-4)
			return nil
		})
	}
	for _, silu := range []bool{false, true} {
		name := fmt.Sprintf("groupnorm [2,64,12,10] g32 eps1e-5 silu=%v", silu)
		guard(name, func() error {
			x := randT(2, 2, 64, 12, 10)
			for i := range x.Data {
				x.Data[i] += 0.5 // a non-zero mean
			}
			w, b := randT(1, 64), randT(1, 64)
			gn := &nn.GroupNorm{Groups: 32, Eps: 1e-5, Weight: w, Bias: b}
			want := gn.Forward(x)
			if silu {
				want = gn.ForwardSiLU(x)
			}
			dx, dw, db := up(g, x), up(g, w), up(g, b)
			defer dx.Free()
			defer dw.Free()
			defer db.Free()
			y, err := g.GroupNorm(dx, dw, db, 32, 1e-5, silu)
			if err != nil {
				return err
			}
			defer y.Free()
			compare(name, down(y), want.Data, 1e-4)
			return nil
		})
	}
	for _, affine := range []bool{true, false} {
		name := fmt.Sprintf("layernorm [2,77,320] eps1e-5 affine=%v", affine)
		guard(name, func() error {
			x := randT(2, 2, 77, 320)
			ln := &nn.LayerNorm{Eps: 1e-5}
			if affine {
				ln.Weight, ln.Bias = randT(1, 320), randT(1, 320)
			}
			want := ln.Forward(x)
			dx := up(g, x)
			defer dx.Free()
			dw, _ := g.UploadOptional(ln.Weight)
			db, _ := g.UploadOptional(ln.Bias)
			defer dw.Free()
			defer db.Free()
			y, err := g.LayerNorm(dx, dw, db, 1e-5)
			if err != nil {
				return err
			}
			defer y.Free()
			compare(name, down(y), want.Data, 1e-4)
			return nil
		})
	}
	guard("softmax rows [300, 1000] scale 0.125", func() error {
		x := randT(8, 300, 1000)
		want := x.Clone()
		for i := range want.Data {
			want.Data[i] *= 0.125
		}
		nn.Softmax(want.Data, 1000)
		dx := up(g, x)
		defer dx.Free()
		if err := g.SoftmaxRows(dx, 1000, 0.125); err != nil {
			return err
		}
		compare("softmax rows [300, 1000] scale 0.125", down(dx), want.Data, 1e-4)
		return nil
	})
	for _, tc := range []struct{ b, lq, lk, c, heads int }{
		{2, 150, 150, 320, 8}, {2, 256, 77, 640, 8}, {1, 64, 77, 768, 12},
	} {
		name := fmt.Sprintf("attention q[%d,%d,%d] kv[%d,%d,%d] heads %d", tc.b, tc.lq, tc.c, tc.b, tc.lk, tc.c, tc.heads)
		guard(name, func() error {
			q, k, v := randT(2, tc.b, tc.lq, tc.c), randT(2, tc.b, tc.lk, tc.c), randT(1, tc.b, tc.lk, tc.c)
			want := nn.ScaledDotProductAttention(q, k, v, tc.heads, nn.AttentionOpts{})
			dq, dk, dv := up(g, q), up(g, k), up(g, v)
			defer dq.Free()
			defer dk.Free()
			defer dv.Free()
			y, err := g.Attention(dq, dk, dv, tc.heads, 0)
			if err != nil {
				return err
			}
			defer y.Free()
			compare(name, down(y), want.Data, 1e-4)
			return nil
		})
	}
	guard("geglu [2,64,1280]", func() error {
		x := randT(3, 2, 64, 1280)
		want := nn.GEGLU(x)
		dx := up(g, x)
		defer dx.Free()
		y, err := g.GEGLU(dx)
		if err != nil {
			return err
		}
		defer y.Free()
		compare("geglu [2,64,1280]", down(y), want.Data, 1e-4)
		return nil
	})
	guard("silu [3,1000,7]", func() error {
		x := randT(6, 3, 1000, 7)
		want := x.Clone()
		nn.SiLU(want)
		dx := up(g, x)
		defer dx.Free()
		if err := g.SiLU(dx); err != nil {
			return err
		}
		compare("silu [3,1000,7]", down(dx), want.Data, 1e-4)
		return nil
	})
	guard("add [5,333,9]", func() error {
		a, b := randT(1, 5, 333, 9), randT(1, 5, 333, 9)
		want := nn.Add(a, b)
		da, db := up(g, a), up(g, b)
		defer da.Free()
		defer db.Free()
		y, err := g.Add(da, db)
		if err != nil {
			return err
		}
		defer y.Free()
		compare("add [5,333,9]", down(y), want.Data, 1e-4)
		return nil
	})
}

// checkIPC exports a buffer and has a child process (this binary again)
// open the handle, check the contents and write a marker back.
func checkIPC(dev *cuda.Device) {
	guard("ipc legacy handle across processes", func() error {
		const n = 1 << 16
		data := make([]float32, n)
		for i := range data {
			data[i] = float32(i%1000) * 0.5
		}
		b, err := dev.Alloc(4 * n)
		if err != nil {
			return err
		}
		defer b.Free()
		if err := b.UploadFloat32(data); err != nil {
			return err
		}
		h, err := b.IPCHandle()
		if err != nil {
			return err
		}
		self, err := os.Executable()
		if err != nil {
			return err
		}
		out, err := exec.Command(self, "-ipc-child", hex.EncodeToString(h.Reserved[:]), strconv.Itoa(4*n)).CombinedOutput()
		if err != nil {
			if len(out) > 600 {
				out = out[:600]
			}
			return fmt.Errorf("child: %v: %s", err, out)
		}
		back := make([]float32, n)
		if err := b.DownloadFloat32(back); err != nil {
			return err
		}
		if back[0] != -1 || back[1] != data[1] {
			return fmt.Errorf("child's write not seen: back[0]=%v back[1]=%v (child said %s)", back[0], back[1], out)
		}
		pass("ipc legacy handle across processes", fmt.Sprintf("child: %s", trim(string(out))))
		return nil
	})
}

func trim(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	return s
}

// ipcChild opens the handle, checks the data the parent wrote and sets
// element 0 to -1.
func ipcChild(hexHandle, size string) int {
	raw, err := hex.DecodeString(hexHandle)
	nbytes, err2 := strconv.Atoi(size)
	if err != nil || err2 != nil || len(raw) != 64 {
		fmt.Println("bad arguments")
		return 2
	}
	var h cuda.IPCHandle
	copy(h.Reserved[:], raw)
	t0 := time.Now()
	dev, err := cuda.Open(0)
	if err != nil {
		fmt.Println("open:", err)
		return 1
	}
	defer dev.Close()
	init := time.Since(t0)
	t1 := time.Now()
	b, err := dev.OpenIPC(h, nbytes)
	if err != nil {
		fmt.Println("open handle:", err)
		return 1
	}
	defer b.Close()
	open := time.Since(t1)
	got := make([]float32, nbytes/4)
	if err := b.DownloadFloat32(got); err != nil {
		fmt.Println("read:", err)
		return 1
	}
	for i, v := range got {
		if want := float32(i%1000) * 0.5; v != want {
			fmt.Printf("element %d = %v, want %v\n", i, v, want)
			return 1
		}
	}
	if err := b.UploadFloat32([]float32{-1}); err != nil {
		fmt.Println("write:", err)
		return 1
	}
	fmt.Printf("init %.0f ms, open handle %.2f ms, read %d floats ok, wrote marker", init.Seconds()*1e3, open.Seconds()*1e3, len(got))
	return 0
}
