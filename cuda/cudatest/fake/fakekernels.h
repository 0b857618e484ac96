/* fakekernels.h: host twins of the kernels in the .cu files of cuda/kernels for the
 * stand-in libcuda: same names, same parameter lists (read through the
 * launch's params array in the .cu signature's order) and the same maths,
 * one loop each. They let tests without a GPU run nn's GPU ops end to end
 * and catch argument-order and shape mistakes on the Go side. They do not
 * test the CUDA code itself (the device check does). */
#include <math.h>

static float sigm_silu(float v) { return v / (1.0f + expf(-v)); }
static int host_kernel2(const char *name, void **params);

static int host_kernel(const char *name, unsigned gx, void **params) {
    if (!strcmp(name, "group_norm_f32")) {
        const float *x = P(0, float *); float *y = P(1, float *);
        const float *w = P(2, float *), *b = P(3, float *);
        int C = P(4, int), HW = P(5, int), G = P(6, int); float eps = P(7, float); int silu = P(8, int);
        int cg = C / G;
        for (unsigned t = 0; t < gx; t++) {
            int n = t / G, g = t % G;
            long long len = (long long)cg * HW, base = ((long long)n * C + (long long)g * cg) * HW;
            double s = 0, v = 0;
            for (long long i = 0; i < len; i++) s += x[base + i];
            double mean = s / len;
            for (long long i = 0; i < len; i++) { double d = x[base + i] - mean; v += d * d; }
            float inv = 1.0f / sqrtf((float)(v / len) + eps);
            for (long long i = 0; i < len; i++) {
                int ch = g * cg + (int)(i / HW);
                float o = (x[base + i] - (float)mean) * inv;
                if (w) o *= w[ch];
                if (b) o += b[ch];
                if (silu) o = sigm_silu(o);
                y[base + i] = o;
            }
        }
        return 0;
    }
    if (!strcmp(name, "layer_norm_f32")) {
        const float *x = P(0, float *); float *y = P(1, float *);
        const float *w = P(2, float *), *b = P(3, float *);
        int D = P(4, int); float eps = P(5, float);
        for (unsigned r = 0; r < gx; r++) {
            const float *xr = x + (long long)r * D; float *yr = y + (long long)r * D;
            double s = 0, v = 0;
            for (int i = 0; i < D; i++) s += xr[i];
            double mean = s / D;
            for (int i = 0; i < D; i++) { double d = xr[i] - mean; v += d * d; }
            float inv = 1.0f / sqrtf((float)(v / D) + eps);
            for (int i = 0; i < D; i++) {
                float o = (xr[i] - (float)mean) * inv;
                if (w) o *= w[i];
                if (b) o += b[i];
                yr[i] = o;
            }
        }
        return 0;
    }
    if (!strcmp(name, "softmax_rows_f32")) {
        float *x = P(0, float *); int n = P(1, int); float scale = P(2, float);
        for (unsigned r = 0; r < gx; r++) {
            float *xr = x + (long long)r * n, m = -INFINITY, s = 0;
            for (int i = 0; i < n; i++) m = fmaxf(m, scale * xr[i]);
            for (int i = 0; i < n; i++) { xr[i] = expf(scale * xr[i] - m); s += xr[i]; }
            for (int i = 0; i < n; i++) xr[i] /= s;
        }
        return 0;
    }
    if (!strcmp(name, "silu_f32")) {
        float *x = P(0, float *); long long n = P(1, long long);
        for (long long i = 0; i < n; i++) x[i] = sigm_silu(x[i]);
        return 0;
    }
    if (!strcmp(name, "add_f32")) {
        float *a = P(0, float *), *b = P(1, float *), *y = P(2, float *); long long n = P(3, long long);
        for (long long i = 0; i < n; i++) y[i] = a[i] + b[i];
        return 0;
    }
    if (!strcmp(name, "geglu_f32")) {
        const float *x = P(0, float *); float *y = P(1, float *); long long rows = P(2, long long); int D = P(3, int);
        for (long long r = 0; r < rows; r++)
            for (int j = 0; j < D; j++) {
                float h = x[r * 2 * D + j], g = x[r * 2 * D + D + j];
                y[r * D + j] = h * (0.5f * g * (1.0f + erff(g * 0.70710678118654752f)));
            }
        return 0;
    }
    if (!strcmp(name, "add_channel_bias_f32")) {
        float *x = P(0, float *); const float *bias = P(1, float *); int C = P(2, int);
        long long HW = P(3, long long), n = P(4, long long);
        for (long long i = 0; i < n; i++) x[i] += bias[(i / HW) % C];
        return 0;
    }
    if (!strcmp(name, "add_row_bias_f32")) {
        float *x = P(0, float *); const float *bias = P(1, float *); int N = P(2, int); long long n = P(3, long long);
        for (long long i = 0; i < n; i++) x[i] += bias[i % N];
        return 0;
    }
    if (!strcmp(name, "add_batch_channel_bias_f32")) {
        float *x = P(0, float *); const float *bias = P(1, float *); long long HW = P(2, long long), n = P(3, long long);
        for (long long i = 0; i < n; i++) x[i] += bias[i / HW];
        return 0;
    }
    if (!strcmp(name, "transpose_f32")) {
        const float *x = P(0, float *); float *y = P(1, float *); int R = P(2, int), K = P(3, int);
        long long n = P(4, long long), rk = (long long)R * K;
        for (long long i = 0; i < n; i++) {
            long long b = i / rk, rem = i - b * rk;
            y[i] = x[b * rk + (rem % R) * K + rem / R];
        }
        return 0;
    }
    if (!strcmp(name, "im2col_f32")) {
        const float *x = P(0, float *); float *cols = P(1, float *);
        int C = P(2, int), H = P(3, int), W = P(4, int), KH = P(5, int), KW = P(6, int);
        int stride = P(7, int), pad = P(8, int), OH = P(9, int), OW = P(10, int);
        long long npix = (long long)OH * OW;
        for (long long row = 0; row < (long long)C * KH * KW; row++) {
            int kx = row % KW, ky = (row / KW) % KH, c = row / (KW * KH);
            for (long long p = 0; p < npix; p++) {
                int oy = p / OW, ox = p % OW, iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                cols[row * npix + p] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[((long long)c * H + iy) * W + ix] : 0.0f;
            }
        }
        return 0;
    }
    return host_kernel2(name, params);
}

static int host_kernel2(const char *name, void **params) {
    if (!strcmp(name, "upsample_nearest_f32")) {
        const float *x = P(0, float *); float *y = P(1, float *);
        int H = P(2, int), W = P(3, int), OH = P(4, int), OW = P(5, int); long long n = P(6, long long);
        float sy = (float)H / OH, sx = (float)W / OW;
        for (long long i = 0; i < n; i++) {
            long long opix = (long long)OH * OW, p = i / opix;
            int rem = i - p * opix, oy = rem / OW, ox = rem % OW;
            int iy = OH == 2 * H ? oy >> 1 : (int)floorf(oy * sy), ix = OW == 2 * W ? ox >> 1 : (int)floorf(ox * sx);
            if (iy > H - 1) iy = H - 1;
            if (ix > W - 1) ix = W - 1;
            y[i] = x[p * H * W + (long long)iy * W + ix];
        }
        return 0;
    }
    if (!strcmp(name, "concat2_f32")) {
        const float *a = P(0, float *), *b = P(1, float *); float *y = P(2, float *);
        long long NA = P(3, long long), NB = P(4, long long), n = P(5, long long);
        for (long long i = 0; i < n; i++) {
            long long bi = i / (NA + NB), j = i - bi * (NA + NB);
            y[i] = j < NA ? a[bi * NA + j] : b[bi * NB + (j - NA)];
        }
        return 0;
    }
    return 500; /* CUDA_ERROR_NOT_FOUND */
}
