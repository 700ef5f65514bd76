/* Winograd F(4x4, 3x3) 3x3 convolutions (stride 1, zero padding 1) for energy_cli.engine.winograd.
 *
 * Tensors are float32 in NHWC order (PyTorch's channels_last); channel counts are multiples of 8, and H and W
 * multiples of 4. Each tile is 4x4 output pixels, read from the 6x6 input pixels around it; tiles are numbered
 * t = (n * H/4 + ty) * W/4 + tx, and each call handles the tiles [t0, t1) (the caller splits them among threads).
 * Vectors of 8 floats (GCC/Clang vector extensions) run along the channels, which are contiguous in NHWC.
 *
 * wino_fused takes one block of tiles at a time through three steps, so that the block's V and M stay in the
 * core's cache (through memory, the transforms' traffic cost as much as the products on a 2-core AVX2 CPU):
 *
 *   input transform:  V[k][t][c] = (BT d BT^T)[i][j], k = 6 i + j, d = the tile's 6x6 input pixels of channel c
 *   products:         M[k] = V[k] U[k] for the 36 positions k (U = the transformed filters, 36 x C x K), in
 *                     panels of 6 tiles x 16 output channels held in 12 vector registers
 *   output transform: y = AT M AT^T + bias (+ residual), then max(y, 0) if relu
 *
 * BT and AT are written out below as sums (their rows are in energy_cli/engine/winograd.py). */
#include <stdint.h>
#include <stdlib.h>
typedef float v8 __attribute__((vector_size(32), aligned(4)));
static const float ZERO[8] = {0};
typedef int32_t vi8 __attribute__((vector_size(32)));
static inline v8 vmax(v8 a, v8 b) { vi8 m = a > b; return (v8)(((vi8)a & m) | ((vi8)b & ~m)); }

/* The input transform of tiles [t0, t1): tile t goes to V + k * s + (t - base) * C for k = 0..35. */
static inline void input_tiles(const float *restrict x, float *restrict V, int64_t s, int64_t base, int64_t N,
                               int64_t H, int64_t W, int64_t C, int64_t t0, int64_t t1) {
    int64_t Ty = H / 4, Tx = W / 4;
    (void)N;
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
        float *dst = V + (t - base) * C;
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

/* The output transform of tiles [t0, t1): tile t's products are at M + k * s + (t - base) * Co. */
static inline void output_tiles(const float *restrict M, int64_t s, int64_t base, const float *restrict bias,
                                const float *restrict res, float *restrict y, int64_t H, int64_t W, int64_t Co,
                                int relu, int64_t t0, int64_t t1) {
    int64_t Ty = H / 4, Tx = W / 4;
    v8 zero = {0};
    for (int64_t t = t0; t < t1; t++) {
        int64_t n = t / (Ty * Tx), r = t % (Ty * Tx), ty = r / Tx, tx = r % Tx;
        for (int64_t c = 0; c < Co; c += 8) {
            v8 o[4][6];
            for (int j = 0; j < 6; j++) {
                const float *q = M + (int64_t)j * s + (t - base) * Co + c;
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

/* R rows (R <= ROWS) of out (row stride ldo) = A (rows of length C, stride lda) times B (C x W NV, stride ldb),
 * for NV = 1 or 2 vectors of W output channels: the register-blocked inner loop of the products, written once
 * for each vector type: v8 (W = 8), and v16 (W = 16) in the AVX-512 build (built with -mavx512f where ATen's
 * kernels use AVX-512), whose 6 rows x 32 channels take 12 of its 32 vector registers. */
#define ROWS 6
#define PANEL(name, vec, W)                                                                                    \
    static inline void name(const float *restrict A, int64_t lda, const float *restrict B, int64_t ldb,       \
                            float *restrict out, int64_t ldo, int64_t C, int R, int NV) {                    \
        vec acc[ROWS][2] = {{{0}}};                                                                            \
        for (int64_t p = 0; p < C; p++) {                                                                      \
            vec b0 = *(const vec *)(B + p * ldb), b1 = NV > 1 ? *(const vec *)(B + p * ldb + W) : b0;          \
            for (int r = 0; r < ROWS; r++) {                                                                   \
                if (r >= R) break;                                                                             \
                float a = A[r * lda + p];                                                                      \
                acc[r][0] += a * b0;                                                                           \
                if (NV > 1) acc[r][1] += a * b1;                                                               \
            }                                                                                                  \
        }                                                                                                      \
        for (int r = 0; r < ROWS; r++) {                                                                       \
            if (r >= R) break;                                                                                 \
            *(vec *)(out + r * ldo) = acc[r][0];                                                               \
            if (NV > 1) *(vec *)(out + r * ldo + W) = acc[r][1];                                               \
        }                                                                                                      \
    }
PANEL(panel, v8, 8)
#if defined(__AVX512F__)
typedef float v16 __attribute__((vector_size(64), aligned(4)));
PANEL(panel16, v16, 16)
#endif

/* out (rows x K, stride K) = A (rows x C, stride C) times B (C x K, stride K): panels of 32 output channels
 * (AVX-512) or 16, then the 16 or 8 that are left. */
static void products(const float *restrict A, const float *restrict B, float *restrict out, int64_t rows,
                     int64_t C, int64_t K) {
    int64_t j = 0;
#if defined(__AVX512F__)
    for (; K - j >= 16; j += K - j >= 32 ? 32 : 16) {
        int NV = K - j >= 32 ? 2 : 1;
        for (int64_t r = 0; r < rows; r += ROWS) {
            int R = rows - r >= ROWS ? ROWS : (int)(rows - r);
            if (R == ROWS && NV == 2) panel16(A + r * C, C, B + j, K, out + r * K + j, K, C, ROWS, 2);
            else panel16(A + r * C, C, B + j, K, out + r * K + j, K, C, R, NV);
        }
    }
#endif
    for (; j < K; j += 16) {
        int wide = K - j >= 16;
        for (int64_t r = 0; r < rows; r += ROWS) {
            int R = rows - r >= ROWS ? ROWS : (int)(rows - r);
            if (R == ROWS && wide) panel(A + r * C, C, B + j, K, out + r * K + j, K, C, ROWS, 2);
            else if (wide) panel(A + r * C, C, B + j, K, out + r * K + j, K, C, R, 2);
            else panel(A + r * C, C, B + j, K, out + r * K + j, K, C, R, 1);
        }
    }
}

/* y (N, H, W, K) = the convolution of x (N, H, W, C) with the transformed filters U (36, C, K), + bias (K) (+ res),
 * then max(y, 0) if relu, for tiles [t0, t1), `block` tiles at a time. Returns 0, or -1 where the scratch memory
 * could not be allocated (nothing written then). */
int wino_fused(const float *restrict x, const float *restrict U, const float *restrict bias,
               const float *restrict res, float *restrict y, int64_t N, int64_t H, int64_t W, int64_t C,
               int64_t K, int relu, int64_t block, int64_t t0, int64_t t1) {
    float *V = NULL;
    if (posix_memalign((void **)&V, 64, (size_t)(36 * block * (C + K)) * sizeof(float))) return -1;
    float *M = V + 36 * block * C;
    for (int64_t b0 = t0; b0 < t1; b0 += block) {
        int64_t b1 = b0 + block < t1 ? b0 + block : t1, n = b1 - b0;
        input_tiles(x, V, block * C, b0, N, H, W, C, b0, b1);
        for (int k = 0; k < 36; k++)
            products(V + k * block * C, U + (int64_t)k * C * K, M + k * block * K, n, C, K);
        output_tiles(M, block * K, b0, bias, res, y, H, W, K, relu, b0, b1);
    }
    free(V);
    return 0;
}

/* The threads: PyTorch's own OpenMP thread team where the caller hands over the runtime's entry points
 * (GOMP_parallel, omp_get_thread_num, omp_get_num_threads: the same ABI in libgomp and Intel's libiomp5). Its
 * idle threads spin for a while after each of PyTorch's parallel operations; threads of another pool would share
 * the cores with them, and measured that way each layer took half as long again. */
typedef void (*parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
typedef int (*int_fn)(void);
static parallel_fn omp_parallel;
static int_fn omp_thread_num, omp_num_threads;

void wino_use_openmp(void *parallel, void *thread_num, void *num_threads) {
    omp_parallel = (parallel_fn)parallel;
    omp_thread_num = (int_fn)thread_num;
    omp_num_threads = (int_fn)num_threads;
}

struct job {
    const float *x, *U, *bias, *res;
    float *y;
    int64_t N, H, W, C, K, block;
    int relu, failed;
};

static void job_part(void *p) {
    struct job *j = p;
    int64_t tiles = j->N * (j->H / 4) * (j->W / 4), parts = omp_num_threads(), i = omp_thread_num();
    int64_t blocks = (tiles + j->block - 1) / j->block, per = (blocks + parts - 1) / parts;
    int64_t t0 = i * per * j->block, t1 = (i + 1) * per * j->block;
    if (t1 > tiles) t1 = tiles;
    if (t0 < t1 && wino_fused(j->x, j->U, j->bias, j->res, j->y, j->N, j->H, j->W, j->C, j->K, j->relu, j->block,
                              t0, t1))
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
}

/* wino_fused over all tiles with `threads` threads of the OpenMP team (wino_use_openmp first); -1 when not set up
 * or out of memory. */
int wino_parallel(const float *x, const float *U, const float *bias, const float *res, float *y, int64_t N,
                  int64_t H, int64_t W, int64_t C, int64_t K, int relu, int64_t block, int threads) {
    if (!omp_parallel) return -1;
    struct job j = {x, U, bias, res, y, N, H, W, C, K, block, relu, 0};
    omp_parallel(job_part, &j, (unsigned)threads, 0);
    return j.failed ? -1 : 0;
}
