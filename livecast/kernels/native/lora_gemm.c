/* Batched LoRA update for x86 CPUs (AVX2/FMA): for every row t whose slot s = slots[t] is >= 0,
 *   y[t, n] += scale[s] * sum_j b[s, n, j] * v[t, j],   v[t, j] = sum_k a[s, j, k] * x[t, k],
 * with x and y float32 or bfloat16 (one flag for both), a (S, R, K) and b (S, N, R) float32.
 *
 * Two phases, as Punica's shrink and expand: v (T, R) float32 into a scratch buffer, then y. Each
 * output is one fixed reduction (lane e of an 8-lane accumulator takes index 8 i + e by FMA, one
 * fixed horizontal sum, then the tail of fewer than 8 in order), and y is rounded once from
 * float32. Tiles and the thread split only change which outputs are computed side by side, so a
 * row's bits do not depend on the other rows of the call. Threads take (row, chunk) tasks in both
 * phases, so a single decode row still spreads over every thread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "q8_act.h"  /* hsum_ps */

#define TILE 4      /* outputs computed side by side, sharing the loads of their common operand */
#define R_CHUNK 8   /* rank outputs per shrink task */
#define N_CHUNK 64  /* columns per expand task */

static inline __m256 load8(const void *p, const int bf16, long i) {
    if (!bf16) return _mm256_loadu_ps((const float *)p + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));  /* bf16 -> fp32 is exact */
}

static inline float load1(const void *p, const int bf16, long i) {
    if (!bf16) return ((const float *)p)[i];
    const uint32_t bits = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t to_bf16(float f) {  /* round to nearest even, as torch's .to(bfloat16) */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);  /* NaN stays NaN */
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

/* out[c] = sum_i w[c * ldw + i] * u[i] for c < nt, i < len; w float32, u float32 or bf16. */
static inline __attribute__((always_inline)) void dot_tile(const float *w, long ldw, const void *u, const int bf16,
                                                           int len, const int nt, float *out) {
    __m256 acc[TILE];
    for (int c = 0; c < nt; c++) acc[c] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= len; i += 8) {
        const __m256 uv = load8(u, bf16, i);
        for (int c = 0; c < nt; c++) acc[c] = _mm256_fmadd_ps(_mm256_loadu_ps(w + c * ldw + i), uv, acc[c]);
    }
    for (int c = 0; c < nt; c++) {
        float sum = hsum_ps(acc[c]);
        for (int j = i; j < len; j++) sum += w[c * ldw + j] * load1(u, bf16, j);
        out[c] = sum;
    }
}

/* out[c] for c < count, TILE at a time; the switch keeps nt a constant in every dot_tile. */
static void dots(const float *w, long ldw, const void *u, const int bf16, int len, int count, float *out) {
    for (int c0 = 0; c0 < count; c0 += TILE, w += TILE * ldw, out += TILE) {
        switch (count - c0 < TILE ? count - c0 : TILE) {
        case 4: dot_tile(w, ldw, u, bf16, len, 4, out); break;
        case 3: dot_tile(w, ldw, u, bf16, len, 3, out); break;
        case 2: dot_tile(w, ldw, u, bf16, len, 2, out); break;
        default: dot_tile(w, ldw, u, bf16, len, 1, out); break;
        }
    }
}

/* bf16: 0 when x and y are float32, 1 when both are bfloat16. slots (t,) int64 in [-1, s).
 * Returns 0, -1 on a shape or slot it does not take (before writing anything), -2 out of memory. */
int lc_add_lora(void *y, long ldy, const void *x, long ldx, int bf16, int t, int k, int n,
                const float *a, const float *b, int r, int s, const int64_t *slots, const float *scales,
                int nthreads) {
    if (t < 0 || k <= 0 || n <= 0 || r <= 0 || s <= 0) return -1;
    for (int row = 0; row < t; row++)
        if (slots[row] < -1 || slots[row] >= s) return -1;
    if (t == 0) return 0;
    float *v = malloc(sizeof(float) * (size_t)t * r);
    if (!v) return -2;
    const long esize = bf16 ? 2 : 4;
    const int r_chunks = (r + R_CHUNK - 1) / R_CHUNK, n_chunks = (n + N_CHUNK - 1) / N_CHUNK;
    #pragma omp parallel num_threads(nthreads)
    {
        /* 1. shrink: v[row, j] = a[slot, j] . x[row] */
        #pragma omp for schedule(dynamic)
        for (long task = 0; task < (long)t * r_chunks; task++) {
            const long row = task / r_chunks, slot = slots[row];
            if (slot < 0) continue;
            const int j0 = (int)(task % r_chunks) * R_CHUNK, j1 = j0 + R_CHUNK < r ? j0 + R_CHUNK : r;
            dots(a + (slot * r + j0) * k, k, (const char *)x + row * ldx * esize, bf16, k, j1 - j0,
                 v + row * r + j0);
        }
        /* 2. expand: y[row, c] += scale * b[slot, c] . v[row], rounded once into y's dtype */
        #pragma omp for schedule(dynamic)
        for (long task = 0; task < (long)t * n_chunks; task++) {
            const long row = task / n_chunks, slot = slots[row];
            if (slot < 0) continue;
            const int c0 = (int)(task % n_chunks) * N_CHUNK, c1 = c0 + N_CHUNK < n ? c0 + N_CHUNK : n;
            float delta[N_CHUNK];
            dots(b + (slot * n + c0) * r, r, v + row * r, 0, r, c1 - c0, delta);
            const float scale = scales[slot];
            if (bf16) {
                uint16_t *yr = (uint16_t *)y + row * ldy;
                for (int c = c0; c < c1; c++) yr[c] = to_bf16(load1(yr, 1, c) + scale * delta[c - c0]);
            } else {
                float *yr = (float *)y + row * ldy;
                for (int c = c0; c < c1; c++) yr[c] += scale * delta[c - c0];
            }
        }
    }
    free(v);
    return 0;
}
