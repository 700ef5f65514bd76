/* Winograd F(4x4, 3x3): the two tile transforms of a 3x3 convolution (stride 1, zero padding 1), for
 * energy_cli.engine.winograd, which does the matrix products between them with torch.bmm.
 *
 * Tensors are float32 in NHWC order (PyTorch's channels_last); channel counts are multiples of 8, and H and W
 * multiples of 4. Each tile is 4x4 output pixels, read from the 6x6 input pixels around it; tiles are numbered
 * t = (n * H/4 + ty) * W/4 + tx, and each call handles the tiles [t0, t1) (the caller splits them among threads).
 * Vectors of 8 floats (GCC/Clang vector extensions) run along the channels, which are contiguous in NHWC.
 *
 *   wino_input:  V[k][t][c] = (BT d BT^T)[i][j], k = 6 i + j, d = the tile's 6x6 input pixels of channel c
 *   wino_output: y = AT M AT^T + bias (+ residual), then max(y, 0) if relu; M[k][t][o] from the products
 *
 * BT and AT are written out below as sums (their rows are in energy_cli/engine/winograd.py). */
#include <stdint.h>
typedef float v8 __attribute__((vector_size(32), aligned(4)));
static const float ZERO[8] = {0};
typedef int32_t vi8 __attribute__((vector_size(32)));
static inline v8 vmax(v8 a, v8 b) { vi8 m = a > b; return (v8)(((vi8)a & m) | ((vi8)b & ~m)); }

/* V (36, T, C) from x (N, H, W, C). */
void wino_input(const float *restrict x, float *restrict V, int64_t N, int64_t H, int64_t W, int64_t C,
                int64_t t0, int64_t t1) {
    int64_t Ty = H / 4, Tx = W / 4, T = N * Ty * Tx, s = T * C;
    for (int64_t t = t0; t < t1; t++) {
        int64_t n = t / (Ty * Tx), r = t % (Ty * Tx), ty = r / Tx, tx = r % Tx;
        const float *src[6][6];
        int64_t step[6][6];
        for (int a = 0; a < 6; a++) {
            int64_t h = 4 * ty - 1 + a;
            for (int b = 0; b < 6; b++) {
                int64_t w = 4 * tx - 1 + b;
                int in = !(h < 0 || h >= H || w < 0 || w >= W);
                src[a][b] = in ? x + ((n * H + h) * W + w) * C : ZERO;
                step[a][b] = in ? 8 : 0;
            }
        }
        float *dst = V + t * C;
        for (int64_t c = 0; c < C; c += 8) {
            v8 u[6][6];
            for (int b = 0; b < 6; b++) {
                v8 d0 = *(const v8 *)src[0][b], d1 = *(const v8 *)src[1][b], d2 = *(const v8 *)src[2][b];
                v8 d3 = *(const v8 *)src[3][b], d4 = *(const v8 *)src[4][b], d5 = *(const v8 *)src[5][b];
                u[0][b] = 4.f * d0 - 5.f * d2 + d4;
                u[1][b] = -4.f * (d1 + d2) + d3 + d4;
                u[2][b] = 4.f * (d1 - d2) - d3 + d4;
                u[3][b] = 2.f * (d3 - d1) - d2 + d4;
                u[4][b] = 2.f * (d1 - d3) - d2 + d4;
                u[5][b] = 4.f * d1 - 5.f * d3 + d5;
            }
            for (int a = 0; a < 6; a++) for (int b = 0; b < 6; b++) src[a][b] += step[a][b];
            for (int i = 0; i < 6; i++) {
                v8 d0 = u[i][0], d1 = u[i][1], d2 = u[i][2], d3 = u[i][3], d4 = u[i][4], d5 = u[i][5];
                float *q = dst + (int64_t)(6 * i) * s + c;
                *(v8 *)(q + 0 * s) = 4.f * d0 - 5.f * d2 + d4;
                *(v8 *)(q + 1 * s) = -4.f * (d1 + d2) + d3 + d4;
                *(v8 *)(q + 2 * s) = 4.f * (d1 - d2) - d3 + d4;
                *(v8 *)(q + 3 * s) = 2.f * (d3 - d1) - d2 + d4;
                *(v8 *)(q + 4 * s) = 2.f * (d1 - d3) - d2 + d4;
                *(v8 *)(q + 5 * s) = 4.f * d1 - 5.f * d3 + d5;
            }
        }
    }
}

/* y (N, H, W, Co) from M (36, T, Co); bias (Co) or NULL; res (N, H, W, Co) or NULL. */
void wino_output(const float *restrict M, const float *restrict bias, const float *restrict res, float *restrict y,
                 int64_t N, int64_t H, int64_t W, int64_t Co, int relu, int64_t t0, int64_t t1) {
    int64_t Ty = H / 4, Tx = W / 4, T = N * Ty * Tx, s = T * Co;
    v8 zero = {0};
    for (int64_t t = t0; t < t1; t++) {
        int64_t n = t / (Ty * Tx), r = t % (Ty * Tx), ty = r / Tx, tx = r % Tx;
        for (int64_t c = 0; c < Co; c += 8) {
            v8 o[4][6];
            for (int j = 0; j < 6; j++) {
                const float *q = M + (int64_t)j * s + t * Co + c;
                v8 m0 = *(const v8 *)(q), m1 = *(const v8 *)(q + 6 * s), m2 = *(const v8 *)(q + 12 * s);
                v8 m3 = *(const v8 *)(q + 18 * s), m4 = *(const v8 *)(q + 24 * s), m5 = *(const v8 *)(q + 30 * s);
                v8 a = m1 + m2, b = m1 - m2, e = m3 + m4, f = m3 - m4;
                o[0][j] = m0 + a + e;
                o[1][j] = b + 2.f * f;
                o[2][j] = a + 4.f * e;
                o[3][j] = b + 8.f * f + m5;
            }
            v8 bb = bias ? *(const v8 *)(bias + c) : zero;
            for (int p = 0; p < 4; p++) {
                v8 m0 = o[p][0], m1 = o[p][1], m2 = o[p][2], m3 = o[p][3], m4 = o[p][4], m5 = o[p][5];
                v8 a = m1 + m2, b = m1 - m2, e = m3 + m4, f = m3 - m4;
                v8 Y[4];
                Y[0] = m0 + a + e + bb;
                Y[1] = b + 2.f * f + bb;
                Y[2] = a + 4.f * e + bb;
                Y[3] = b + 8.f * f + m5 + bb;
                int64_t off = ((n * H + 4 * ty + p) * W + 4 * tx) * Co + c;
                for (int qx = 0; qx < 4; qx++) {
                    v8 v = Y[qx];
                    if (res) v += *(const v8 *)(res + off + qx * Co);
                    if (relu) v = vmax(v, zero);
                    *(v8 *)(y + off + qx * Co) = v;
                }
            }
        }
    }
}
