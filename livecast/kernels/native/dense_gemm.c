/* Batch-invariant dense GEMM for x86 CPUs (AVX2/FMA): out[m, n] = sum_k x[m, k] * W[n, k], with
 * float32 activations and float32 or bfloat16 weights (N, K), K a multiple of 8.
 *
 * Every output is one fixed reduction: lane e of an 8-lane accumulator takes k = 8 j + e for
 * increasing j by FMA, then the 8 lanes are summed in one fixed tree. Row tiles (up to 4), column
 * tiles (up to 3) and their remainders, and the thread split over column blocks only change which
 * outputs are computed side by side, never that order, so a row's result does not depend on how
 * many rows share the call or where it sits among them (MKL's sgemm picks its kernel by shape and
 * does: rows 1, 2, 3, 5 and 7 of a call give other bits than the same rows in a call of 8).
 */
#include <stdint.h>

#include <immintrin.h>

#define TILE_M 4
#define TILE_N 3
#define BLOCK_N 48  /* columns per thread task: a 48 x K weight panel stays in L2 across row tiles */

static inline float hsum8(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

static inline __attribute__((always_inline)) __m256 load_w(const void *w, const int bf16, long i) {
    if (!bf16) return _mm256_loadu_ps((const float *)w + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));  /* bf16 -> fp32 is exact */
}

/* mt rows x nt columns; both compile-time constants at every call, so the accumulators stay in registers */
static inline __attribute__((always_inline)) void tile(const float *x, long ldx, const void *w, const int bf16,
                                                       int k, const int mt, const int nt, float *out, long ldo) {
    __m256 acc[TILE_M][TILE_N];
    for (int t = 0; t < mt; t++)
        for (int c = 0; c < nt; c++) acc[t][c] = _mm256_setzero_ps();
    for (int i = 0; i < k; i += 8) {
        __m256 wv[TILE_N];
        for (int c = 0; c < nt; c++) wv[c] = load_w(w, bf16, (long)c * k + i);
        for (int t = 0; t < mt; t++) {
            const __m256 xv = _mm256_loadu_ps(x + (long)t * ldx + i);
            for (int c = 0; c < nt; c++) acc[t][c] = _mm256_fmadd_ps(xv, wv[c], acc[t][c]);
        }
    }
    for (int t = 0; t < mt; t++)
        for (int c = 0; c < nt; c++) out[(long)t * ldo + c] = hsum8(acc[t][c]);
}

#define TILE_ROWS(MT, BF16)                                                        \
    switch (n1 - n0 < TILE_N ? n1 - n0 : TILE_N) {                                 \
    case 3: tile(xm, ldx, wn, BF16, k, MT, 3, o, ldo); break;                      \
    case 2: tile(xm, ldx, wn, BF16, k, MT, 2, o, ldo); break;                      \
    default: tile(xm, ldx, wn, BF16, k, MT, 1, o, ldo); break;                     \
    }

#define PANEL(BF16)                                                                \
    for (int m0 = 0; m0 < m; m0 += TILE_M) {                                       \
        const float *xm = x + (long)m0 * ldx;                                      \
        for (int n0 = nb; n0 < n1; n0 += TILE_N) {                                 \
            const void *wn = (const char *)w + (long)n0 * k * esize;               \
            float *o = out + (long)m0 * ldo + n0;                                  \
            switch (m - m0 < TILE_M ? m - m0 : TILE_M) {                           \
            case 4: TILE_ROWS(4, BF16) break;                                      \
            case 3: TILE_ROWS(3, BF16) break;                                      \
            case 2: TILE_ROWS(2, BF16) break;                                      \
            default: TILE_ROWS(1, BF16) break;                                     \
            }                                                                      \
        }                                                                          \
    }

/* w_bf16: 0 for float32 weights, 1 for bfloat16. Returns 0, or -1 on a shape it does not take. */
int lc_dense_gemm(const float *x, long ldx, int m, int k, const void *w, int w_bf16, int n, float *out,
                  long ldo, int nthreads) {
    if (m < 0 || n <= 0 || k <= 0 || k % 8) return -1;
    if (m == 0) return 0;
    const long esize = w_bf16 ? 2 : 4;
    const int blocks = (n + BLOCK_N - 1) / BLOCK_N;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int b = 0; b < blocks; b++) {
        const int nb = b * BLOCK_N, n1 = nb + BLOCK_N < n ? nb + BLOCK_N : n;
        if (w_bf16) { PANEL(1) } else { PANEL(0) }
    }
    return 0;
}
