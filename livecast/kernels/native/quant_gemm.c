/* Weight-only quantized GEMMs for x86 CPUs with AVX2: out[m, n] = sum_k x[m, k] * W[n, k].
 *
 * Activations are quantized per call to int8 blocks of 32 (q8_act.h), so inner products are
 * integer (vpmaddubsw + vpmaddwd, as in ggml). Weights are interleaved 8 output rows at a time
 * (as llama.cpp's repacked CPU layouts are): one 32-byte load holds 4 consecutive inputs of each
 * of 8 rows, so a broadcast of 4 activation bytes yields the 8 rows' partial sums lane by lane,
 * with no horizontal sums, and the 8 rows' scales are one vector.
 *   q4: W[n, k] = code * scale[n, k / g] + min[n, k / g], codes 0..15. Per row-octet and block of
 *       32 inputs, 128 bytes: chunk c (0..3) byte 4 i + e holds row i's input 4 c + e in its low
 *       nibble and input 16 + 4 c + e in its high nibble. scales, mins: (N/8, K/g, 8) fp16.
 *   q8: W[n, k] = code * scale[n, k / 32], int8 codes. Per row-octet and block, 256 bytes: chunk
 *       c (0..7) byte 4 i + e holds row i's input 4 c + e. scales: (N/8, K/32, 8) fp16.
 * Weights are read once per call for all activation rows (tiles of 4). Row-octets are split
 * over OpenMP threads (the libgomp PyTorch loads, so both share one pool).
 */
#include <stdlib.h>
#include <string.h>

#include "native.h"
#include "q8_act.h"

#define TILE_M 4

typedef struct {
    int8_t *q;
    float *d, *s, *gs;  /* block scales, block sums, per-weight-group sums */
} act_q8;

static int act_quantize(const float *x, long ldx, int m, int k, int g, act_q8 *a) {
    const int nb = k / QK, ng = k / g, bpg = g / QK;
    a->q = malloc((size_t)m * k);
    a->d = malloc(sizeof(float) * (size_t)m * nb);
    a->s = malloc(sizeof(float) * (size_t)m * nb);
    a->gs = malloc(sizeof(float) * (size_t)m * ng);
    if (!a->q || !a->d || !a->s || !a->gs) return -2;
    quantize_rows_q8(x, ldx, m, k, a->q, a->d, a->s);
    for (long i = 0; i < (long)m * ng; i++) {
        float sum = 0.0f;
        for (int b = 0; b < bpg; b++) sum += a->s[i * bpg + b];
        a->gs[i] = sum;
    }
    return 0;
}

static void act_free(act_q8 *a) {
    free(a->q); free(a->d); free(a->s); free(a->gs);
}

static inline __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* 8 output rows (one octet) x mt activation rows. */
static inline __attribute__((always_inline)) void q4_octet(
        const uint8_t *w, const uint16_t *sc, const uint16_t *mn, int k, int g,
        const int8_t *q, const float *d, const float *gs, const int mt, float *out, long ldo) {
    const int nb = k / QK, bpg = g / QK, ng = k / g;
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 acc[TILE_M];
    for (int t = 0; t < mt; t++) acc[t] = _mm256_setzero_ps();
    for (int gi = 0; gi < ng; gi++) {
        const __m256 sw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + gi * 8)));
        const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mn + gi * 8)));
        for (int bi = 0; bi < bpg; bi++) {
            const int b = gi * bpg + bi;
            const uint8_t *wb = w + (long)b * 128;
            __m256i sum[TILE_M];
            for (int t = 0; t < mt; t++) sum[t] = _mm256_setzero_si256();
            for (int c = 0; c < 4; c++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(wb + c * 32));
                const __m256i lo = _mm256_and_si256(v, low);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                for (int t = 0; t < mt; t++) {  /* |sum| <= 8 * 2 * 15 * 127 < 2^15: no int16 overflow */
                    const int8_t *xb = q + (long)t * k + b * QK;
                    sum[t] = _mm256_add_epi16(sum[t], _mm256_maddubs_epi16(lo, bcast4(xb + 4 * c)));
                    sum[t] = _mm256_add_epi16(sum[t], _mm256_maddubs_epi16(hi, bcast4(xb + 16 + 4 * c)));
                }
            }
            for (int t = 0; t < mt; t++) {
                const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(sum[t], ones));
                acc[t] = _mm256_fmadd_ps(dot, _mm256_mul_ps(sw, _mm256_set1_ps(d[t * nb + b])), acc[t]);
            }
        }
        for (int t = 0; t < mt; t++) acc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(gs[t * ng + gi]), acc[t]);
    }
    for (int t = 0; t < mt; t++) _mm256_storeu_ps(out + t * ldo, acc[t]);
}

static inline __attribute__((always_inline)) void q8_octet(
        const int8_t *w, const uint16_t *sc, int k, const int8_t *q, const float *d,
        const int mt, float *out, long ldo) {
    const int nb = k / QK;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[TILE_M];
    for (int t = 0; t < mt; t++) acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const __m256 sw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + b * 8)));
        const int8_t *wb = w + (long)b * 256;
        __m256i sum[TILE_M];
        for (int t = 0; t < mt; t++) sum[t] = _mm256_setzero_si256();
        for (int c = 0; c < 8; c++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(wb + c * 32));
            const __m256i vabs = _mm256_sign_epi8(v, v);
            for (int t = 0; t < mt; t++) {
                const __m256i x = bcast4(q + (long)t * k + b * QK + 4 * c);
                const __m256i p = _mm256_maddubs_epi16(vabs, _mm256_sign_epi8(x, v));
                sum[t] = _mm256_add_epi32(sum[t], _mm256_madd_epi16(p, ones));
            }
        }
        for (int t = 0; t < mt; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[t]), _mm256_mul_ps(sw, _mm256_set1_ps(d[t * nb + b])), acc[t]);
    }
    for (int t = 0; t < mt; t++) _mm256_storeu_ps(out + t * ldo, acc[t]);
}

/* Returns 0, or -1 on a shape the layout cannot hold, -2 when out of memory. */
int lc_q4_gemm(const float *x, long ldx, int m, int k, const uint8_t *w, const uint16_t *scales,
               const uint16_t *mins, int n, int g, float *out, long ldo, int nthreads) {
    if (m < 0 || n <= 0 || n % 8 || k <= 0 || g <= 0 || g % QK || k % g) return -1;
    if (m == 0) return 0;  /* a step that needs no rows (e.g. no logits) */
    act_q8 a = {0};
    if (act_quantize(x, ldx, m, k, g, &a)) { act_free(&a); return -2; }
    const int nb = k / QK, ng = k / g;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int j = 0; j < n / 8; j++) {
        const uint8_t *w8 = w + (long)j * nb * 128;
        const uint16_t *s8 = scales + (long)j * ng * 8, *m8 = mins + (long)j * ng * 8;
        for (int m0 = 0; m0 < m; m0 += TILE_M) {
            const int8_t *q = a.q + (long)m0 * k;
            const float *d = a.d + (long)m0 * nb, *gs = a.gs + (long)m0 * ng;
            float *o = out + m0 * ldo + j * 8;
            switch (m - m0 < TILE_M ? m - m0 : TILE_M) {  /* constant tile heights: accumulators stay in registers */
            case 4: q4_octet(w8, s8, m8, k, g, q, d, gs, 4, o, ldo); break;
            case 3: q4_octet(w8, s8, m8, k, g, q, d, gs, 3, o, ldo); break;
            case 2: q4_octet(w8, s8, m8, k, g, q, d, gs, 2, o, ldo); break;
            default: q4_octet(w8, s8, m8, k, g, q, d, gs, 1, o, ldo); break;
            }
        }
    }
    act_free(&a);
    return 0;
}

int lc_q8_gemm(const float *x, long ldx, int m, int k, const int8_t *w, const uint16_t *scales,
               int n, float *out, long ldo, int nthreads) {
    if (m < 0 || n <= 0 || n % 8 || k <= 0 || k % QK) return -1;
    if (m == 0) return 0;
    act_q8 a = {0};
    if (act_quantize(x, ldx, m, k, QK, &a)) { act_free(&a); return -2; }
    const int nb = k / QK;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int j = 0; j < n / 8; j++) {
        const int8_t *w8 = w + (long)j * nb * 256;
        const uint16_t *s8 = scales + (long)j * nb * 8;
        for (int m0 = 0; m0 < m; m0 += TILE_M) {
            const int8_t *q = a.q + (long)m0 * k;
            const float *d = a.d + (long)m0 * nb;
            float *o = out + m0 * ldo + j * 8;
            switch (m - m0 < TILE_M ? m - m0 : TILE_M) {
            case 4: q8_octet(w8, s8, k, q, d, 4, o, ldo); break;
            case 3: q8_octet(w8, s8, k, q, d, 3, o, ldo); break;
            case 2: q8_octet(w8, s8, k, q, d, 2, o, ldo); break;
            default: q8_octet(w8, s8, k, q, d, 1, o, ldo); break;
            }
        }
    }
    act_free(&a);
    return 0;
}

int lc_linear_apply(const lc_linear *l, const float *x, long ldx, int m, float *out, long ldo, int nthreads) {
    if (l->bits == 4)
        return lc_q4_gemm(x, ldx, m, l->k, l->w, l->scales, l->mins, l->n, l->g, out, ldo, nthreads);
    if (l->bits == 8)
        return lc_q8_gemm(x, ldx, m, l->k, l->w, l->scales, l->n, out, ldo, nthreads);
    return -1;
}
