// prelude_shim.cpp: a test program that compiles kernels/prelude.cuh's
// SDB_EMU branch with g++ and a minimal stand-in for the CUDA built-ins it
// uses (one warp = 32 std::threads, shuffles through a barrier), so
// TestPreludeEmu can check the fp16 conversions bit for bit and the
// mma_m16n8k16 emulation against a plain matrix product without the
// cudatest emulator. Not an emulator: one block of one warp only.
//
// Usage: prelude_shim conv <in.f32> <out.h16> <out-h2f.f32>
//        prelude_shim mma <seed>   (prints max abs error, reductions)
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

struct shim_dim3 { unsigned x, y, z; };
static thread_local shim_dim3 threadIdx = {0, 0, 0};
static shim_dim3 blockDim = {32, 1, 1};
#define __device__
#define __forceinline__ inline

struct uint4 { unsigned x, y, z, w; };
static uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
static float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }

static std::barrier<>* warp_bar;
static uint64_t shfl_slots[32];
template <class T> static T __shfl_sync(unsigned, T v, int src) {
    uint64_t x = 0;
    memcpy(&x, &v, sizeof v);
    shfl_slots[threadIdx.x] = x;
    warp_bar->arrive_and_wait();
    uint64_t y = shfl_slots[src & 31];
    warp_bar->arrive_and_wait();
    T r;
    memcpy(&r, &y, sizeof r);
    return r;
}
template <class T> static T __shfl_xor_sync(unsigned m, T v, int o) { return __shfl_sync(m, v, (int)threadIdx.x ^ o); }
static void __syncthreads() { warp_bar->arrive_and_wait(); }

#include "prelude.cuh"

static void run_warp(void (*body)(int)) {
    std::barrier<> bar(32);
    warp_bar = &bar;
    std::vector<std::thread> ts;
    for (int l = 0; l < 32; l++) ts.emplace_back([=] { threadIdx.x = l; body(l); });
    for (auto& t : ts) t.join();
}

static half_t A[16][16], B[16][8];
static float C[16][8], D[16][8];
static float red_in[32], red_out[4][32];

static void mma_body(int lane) {
    int g = lane >> 2, t = lane & 3;
    // Fragments written out from the PTX ISA table independently of the
    // prelude's emulation.
    unsigned a[4] = {pack_h2(A[g][2 * t], A[g][2 * t + 1]), pack_h2(A[g + 8][2 * t], A[g + 8][2 * t + 1]),
                     pack_h2(A[g][2 * t + 8], A[g][2 * t + 9]), pack_h2(A[g + 8][2 * t + 8], A[g + 8][2 * t + 9])};
    unsigned b[2] = {pack_h2(B[2 * t][g], B[2 * t + 1][g]), pack_h2(B[2 * t + 8][g], B[2 * t + 9][g])};
    float c[4] = {C[g][2 * t], C[g][2 * t + 1], C[g + 8][2 * t], C[g + 8][2 * t + 1]};
    mma_m16n8k16(c, a, b, c); // d aliasing c
    D[g][2 * t] = c[0];
    D[g][2 * t + 1] = c[1];
    D[g + 8][2 * t] = c[2];
    D[g + 8][2 * t + 1] = c[3];
    static float shared_sh[33];
    red_out[0][lane] = warp_sum(red_in[lane]);
    red_out[1][lane] = warp_max(red_in[lane]);
    red_out[2][lane] = block_sum(red_in[lane], shared_sh);
    red_out[3][lane] = block_max(red_in[lane], shared_sh);
}

int main(int argc, char** argv) {
    if (argc == 5 && !strcmp(argv[1], "conv")) {
        FILE* in = fopen(argv[2], "rb");
        if (!in) return 2;
        std::vector<float> xs;
        float v;
        while (fread(&v, 4, 1, in) == 1) xs.push_back(v);
        fclose(in);
        std::vector<half_t> hs(xs.size());
        for (size_t i = 0; i < xs.size(); i++) hs[i] = f2h(xs[i]);
        FILE* out = fopen(argv[3], "wb");
        fwrite(hs.data(), 2, hs.size(), out);
        fclose(out);
        std::vector<float> fs(65536);
        for (int h = 0; h < 65536; h++) fs[h] = h2f((half_t)h);
        out = fopen(argv[4], "wb");
        fwrite(fs.data(), 4, fs.size(), out);
        fclose(out);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "mma")) {
        unsigned s = (unsigned)atoi(argv[2]);
        auto rnd = [&] { s = s * 1664525u + 1013904223u; return ((s >> 8) & 0xffff) / 32768.0f - 1.0f; };
        for (auto& r : A) for (auto& x : r) x = f2h(rnd() * 4);
        for (auto& r : B) for (auto& x : r) x = f2h(rnd() * 4);
        for (auto& r : C) for (auto& x : r) x = rnd();
        for (int i = 0; i < 32; i++) red_in[i] = rnd() * 100;
        run_warp(mma_body);
        double maxerr = 0, maxref = 0;
        for (int m = 0; m < 16; m++)
            for (int n = 0; n < 8; n++) {
                double ref = C[m][n];
                for (int k = 0; k < 16; k++) ref += (double)h2f(A[m][k]) * h2f(B[k][n]);
                maxerr = fmax(maxerr, fabs(ref - D[m][n]));
                maxref = fmax(maxref, fabs(ref));
            }
        double sum = 0, mx = -1e30;
        for (int i = 0; i < 32; i++) { sum += red_in[i]; mx = fmax(mx, red_in[i]); }
        double rerr = 0;
        for (int l = 0; l < 32; l++) {
            rerr = fmax(rerr, fabs(red_out[0][l] - sum) + fabs(red_out[2][l] - sum));
            rerr = fmax(rerr, fabs(red_out[1][l] - mx) + fabs(red_out[3][l] - mx));
        }
        printf("mma maxerr %.9g maxref %.9g reduce maxerr %.9g\n", maxerr, maxref, rerr);
        return 0;
    }
    fprintf(stderr, "usage: prelude_shim conv in out out2 | mma seed\n");
    return 2;
}
