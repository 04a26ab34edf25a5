/* Batched LoRA update for x86 CPUs (AVX2/FMA): for every row t whose slot s = slots[t] is >= 0,
 *   y[t, n] += scale[s] * sum_j b[s, n, j] * v[t, j],   v[t, j] = sum_k a[s, j, k] * x[t, k],
 * with x and y float32 or bfloat16 (bit 0 of one flag), a (S, R, K) and b (S, N, R) float32 or
 * bfloat16 (bit 1: the adapters' weights, widened exactly to float32 as they are read).
 *
 * Rows are grouped by slot (a stable counting sort) into tiles of up to TILE_M rows, so each
 * gathered a[s] and b[s] panel is read once per tile. Two phases, as Punica's shrink and expand:
 * v (T, R) float32 into a scratch buffer, then y, rounded once from float32. Every output is one
 * fixed reduction: lane e of an 8-lane accumulator takes index 8 i + e by FMA (the last partial
 * step zero-padded), then one fixed horizontal tree. Tiles and the thread split only change which
 * outputs are computed side by side, so a row's bits do not depend on the other rows of the call.
 * Threads take (tile, chunk) tasks in both phases, so a single decode row of a large projection still
 * uses every thread; calls under SERIAL_FMAS run on one.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "q8_act.h"  /* hsum_ps */

#define TILE_M 4    /* rows of one slot side by side */
#define TILE_R 3    /* rank outputs side by side in the shrink (TILE_M x TILE_R accumulators) */
#define R_CHUNK 12  /* rank outputs per shrink task */
#define N_CHUNK 64  /* columns per expand task, 8 at a time */
#define SERIAL_FMAS (1L << 17)  /* below this many multiply-adds (~10 us) a thread fork/join costs more than it saves */

typedef struct { int first, count; long slot; } tile_t;  /* rows order[first .. first + count) */

static inline __m256 tail_mask(int len) {  /* lanes < len all ones */
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(len), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

/* 8 floats from w + i, len (<= 8) of them read, the rest zero */
static inline __m256 load8(const float *w, long i, int len, __m256 mask) {
    return len == 8 ? _mm256_loadu_ps(w + i) : _mm256_maskload_ps(w + i, _mm256_castps_si256(mask));
}

/* 8 weights from w + i (float32, or bfloat16 widened exactly), len (<= 8) read, the rest zero */
static inline __m256 loadw8(const void *w, const int wbf16, long i, int len, __m256 mask) {
    if (!wbf16) return load8((const float *)w, i, len, mask);
    const uint16_t *p = (const uint16_t *)w + i;
    __m128i h;
    if (len == 8) {
        h = _mm_loadu_si128((const __m128i *)p);
    } else {
        uint16_t tmp[8] = {0};
        memcpy(tmp, p, sizeof(uint16_t) * (size_t)len);
        h = _mm_loadu_si128((const __m128i *)tmp);
    }
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* The 8 sums of s[0..7], as 8 lanes; per output the same tree as every other. */
static inline __m256 hsum8x8(const __m256 s[8]) {
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(s[4], s[5]), _mm256_hadd_ps(s[6], s[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

static inline uint16_t to_bf16(float f) {  /* round to nearest even, as torch's .to(bfloat16) */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);  /* NaN stays NaN */
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

static inline __m128i to_bf16x8(__m256 f) {  /* to_bf16 on 8 lanes */
    const __m256i bits = _mm256_castps_si256(f);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i h = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
    h = _mm256_blendv_epi8(h, nan, _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
    return _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* v[row_t, c] = a_c . x_t for mt rows and nt rank rows of a (both constants at every call). */
static inline __attribute__((always_inline)) void shrink_tile(
        const float *const *xr, const void *a, const int wbf16, int k, const int mt, const int nt,
        float *const *out) {
    __m256 acc[TILE_M][TILE_R];
    for (int t = 0; t < mt; t++)
        for (int c = 0; c < nt; c++) acc[t][c] = _mm256_setzero_ps();
    for (int i = 0; i < k; i += 8) {
        const int len = k - i < 8 ? k - i : 8;
        const __m256 mask = tail_mask(len);
        __m256 av[TILE_R];
        for (int c = 0; c < nt; c++) av[c] = loadw8(a, wbf16, (long)c * k + i, len, mask);
        for (int t = 0; t < mt; t++) {
            const __m256 xv = load8(xr[t], i, len, mask);
            for (int c = 0; c < nt; c++) acc[t][c] = _mm256_fmadd_ps(xv, av[c], acc[t][c]);
        }
    }
    for (int t = 0; t < mt; t++)
        for (int c = 0; c < nt; c++) out[t][c] = hsum_ps(acc[t][c]);
}

#define SHRINK_COLS(MT)                                                              \
    switch (j1 - j < TILE_R ? j1 - j : TILE_R) {                                     \
    case 3: shrink_tile(xr, aj, wbf16, k, MT, 3, vr); break;                         \
    case 2: shrink_tile(xr, aj, wbf16, k, MT, 2, vr); break;                         \
    default: shrink_tile(xr, aj, wbf16, k, MT, 1, vr); break;                        \
    }

/* v[row, j0 .. j1) for the tile's rows; bf16 rows are widened into xbuf (TILE_M x k) first. */
static void shrink(const tile_t *tl, const int *order, const void *x, long ldx, const int bf16, int k,
                   const void *a, const int wbf16, int r, float *v, int ldv, int j0, int j1, float *xbuf) {
    const float *xr[TILE_M];
    for (int t = 0; t < tl->count; t++) {
        const long row = order[tl->first + t];
        if (!bf16) {
            xr[t] = (const float *)x + row * ldx;
            continue;
        }
        const uint16_t *src = (const uint16_t *)x + row * ldx;
        uint32_t *dst = (uint32_t *)(xbuf + (long)t * k);
        for (int i = 0; i < k; i++) dst[i] = (uint32_t)src[i] << 16;  /* bf16 -> fp32 is exact */
        xr[t] = xbuf + (long)t * k;
    }
    for (int j = j0; j < j1; j += TILE_R) {
        const void *aj = (const char *)a + (tl->slot * r + j) * (long)k * (wbf16 ? 2 : 4);
        float *vr[TILE_M];
        for (int t = 0; t < tl->count; t++) vr[t] = v + (long)order[tl->first + t] * ldv + j;
        switch (tl->count) {
        case 4: SHRINK_COLS(4) break;
        case 3: SHRINK_COLS(3) break;
        case 2: SHRINK_COLS(2) break;
        default: SHRINK_COLS(1) break;
        }
    }
}

/* y[row, c .. c + nc) += scale * b_c . v[row] for one row, b_c the rows of b[slot] (nc a constant
 * at the full-group call, so the 8 accumulators stay in registers). */
static inline __attribute__((always_inline)) void expand_group(
        const void *bs, const int wbf16, int r, const float *vr, const int nc, float scale, const int bf16,
        void *yr, int c) {
    __m256 acc[8];
    for (int e = 0; e < 8; e++) acc[e] = _mm256_setzero_ps();
    for (int j = 0; j < r; j += 8) {
        const int len = r - j < 8 ? r - j : 8;
        const __m256 mask = tail_mask(len), vv = _mm256_loadu_ps(vr + j);  /* v rows are zero-padded to 8 */
        for (int e = 0; e < nc; e++)
            acc[e] = _mm256_fmadd_ps(loadw8(bs, wbf16, (long)(c + e) * r + j, len, mask), vv, acc[e]);
    }
    const __m256 delta = _mm256_mul_ps(_mm256_set1_ps(scale), hsum8x8(acc));
    if (nc == 8 && bf16) {
        __m128i *yc = (__m128i *)((uint16_t *)yr + c);
        const __m256 sum = _mm256_add_ps(_mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(yc)), 16)), delta);
        _mm_storeu_si128(yc, to_bf16x8(sum));
    } else if (nc == 8) {
        float *yc = (float *)yr + c;
        _mm256_storeu_ps(yc, _mm256_add_ps(_mm256_loadu_ps(yc), delta));
    } else {
        float d[8];
        _mm256_storeu_ps(d, delta);
        for (int e = 0; e < nc; e++) {
            if (bf16) {
                uint16_t *yc = (uint16_t *)yr + c + e;
                const uint32_t bits = (uint32_t)*yc << 16;
                float old;
                memcpy(&old, &bits, 4);
                *yc = to_bf16(old + d[e]);
            } else {
                ((float *)yr)[c + e] += d[e];
            }
        }
    }
}

static void expand(const tile_t *tl, const int *order, void *y, long ldy, const int bf16, const void *b,
                   const int wbf16, int n, int r, const float *v, int ldv, float scale, int c0, int c1) {
    const void *bs = (const char *)b + tl->slot * (long)n * r * (wbf16 ? 2 : 4);
    const long esize = bf16 ? 2 : 4;
    for (int c = c0; c < c1; c += 8)  /* a b panel of 8 x r stays in L1 across the tile's rows */
        for (int t = 0; t < tl->count; t++) {
            const long row = order[tl->first + t];
            void *yr = (char *)y + row * ldy * esize;
            if (c1 - c >= 8) expand_group(bs, wbf16, r, v + row * ldv, 8, scale, bf16, yr, c);
            else expand_group(bs, wbf16, r, v + row * ldv, c1 - c, scale, bf16, yr, c);
        }
}

/* dtypes: bit 0 set when x and y are bfloat16 (else float32), bit 1 when a and b are bfloat16.
 * slots (t,) int64 in [-1, s).
 * Returns 0, -1 on a shape or slot it does not take (before writing anything), -2 out of memory. */
int lc_add_lora(void *y, long ldy, const void *x, long ldx, int dtypes, int t, int k, int n,
                const void *a, const void *b, int r, int s, const int64_t *slots, const float *scales,
                int nthreads) {
    const int bf16 = dtypes & 1, wbf16 = (dtypes >> 1) & 1;
    if (t < 0 || k <= 0 || n <= 0 || r <= 0 || s <= 0) return -1;
    for (int row = 0; row < t; row++)
        if (slots[row] < -1 || slots[row] >= s) return -1;
    if (t == 0) return 0;
    const int ldv = (r + 7) / 8 * 8;
    int *pos = calloc((size_t)s + 1, sizeof(int)), *order = malloc(sizeof(int) * (size_t)t);
    tile_t *tiles = malloc(sizeof(tile_t) * (size_t)t);
    float *v = calloc((size_t)t * ldv, sizeof(float));  /* (t, ldv), the padding stays zero */
    int status = pos && order && tiles && v ? 0 : -2;
    if (status) goto done;
    /* rows grouped by slot, in row order within a slot; tiles of up to TILE_M rows of one slot */
    for (int row = 0; row < t; row++)
        if (slots[row] >= 0) pos[slots[row] + 1]++;
    for (int i = 1; i <= s; i++) pos[i] += pos[i - 1];
    for (int row = 0; row < t; row++)
        if (slots[row] >= 0) order[pos[slots[row]]++] = row;
    int num_tiles = 0;
    for (int slot = 0, begin = 0; slot < s; begin = pos[slot++])
        for (int f = begin; f < pos[slot]; f += TILE_M)
            tiles[num_tiles++] = (tile_t){f, pos[slot] - f < TILE_M ? pos[slot] - f : TILE_M, slot};
    const int r_chunks = (r + R_CHUNK - 1) / R_CHUNK, n_chunks = (n + N_CHUNK - 1) / N_CHUNK;
    if ((long)pos[s - 1] * r * ((long)k + n) < SERIAL_FMAS) nthreads = 1;  /* pos[s - 1]: rows with a slot */
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        float *xbuf = bf16 ? malloc(sizeof(float) * TILE_M * (size_t)k) : NULL;
        if (bf16 && !xbuf) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp barrier
        if (!failed) {
            /* 1. shrink: v[row, j] = a[slot, j] . x[row] */
            #pragma omp for schedule(dynamic)
            for (long task = 0; task < (long)num_tiles * r_chunks; task++) {
                const int j0 = (int)(task % r_chunks) * R_CHUNK, j1 = j0 + R_CHUNK < r ? j0 + R_CHUNK : r;
                shrink(&tiles[task / r_chunks], order, x, ldx, bf16, k, a, wbf16, r, v, ldv, j0, j1, xbuf);
            }
            /* 2. expand: y[row, c] += scale * b[slot, c] . v[row], rounded once into y's dtype */
            #pragma omp for schedule(dynamic)
            for (long task = 0; task < (long)num_tiles * n_chunks; task++) {
                const tile_t *tl = &tiles[task / n_chunks];
                const int c0 = (int)(task % n_chunks) * N_CHUNK, c1 = c0 + N_CHUNK < n ? c0 + N_CHUNK : n;
                expand(tl, order, y, ldy, bf16, b, wbf16, n, r, v, ldv, scales[tl->slot], c0, c1);
            }
        }
        free(xbuf);
    }
    status = failed ? -2 : 0;
done:
    free(pos); free(order); free(tiles); free(v);
    return status;
}
