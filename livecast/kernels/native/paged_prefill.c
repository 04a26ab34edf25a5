/* Causal prefill attention over the paged KV cache on x86 CPUs (AVX2 + FMA), float32, reading
 * K/V in place through the block table.
 *
 * One chunk of q_len queries sits at the end of seq_len tokens: query i sees keys
 * 0 .. seq_len - q_len + i. Flash-style: a task owns one KV head and a tile of queries, with all
 * the heads of that KV head's GQA group as extra rows, so every K/V row loaded serves
 * tile x group query rows. Keys stream in steps of KEYS; each step's K rows are transposed into
 * a (head_dim, KEYS) panel so the scores are broadcast-FMA rows (no horizontal sums), then an
 * online softmax (running max and sum per row) rescales the float32 accumulators before P.V.
 * OpenMP over (KV head, query tile) tasks, so even one sequence spreads over the threads.
 * Cache layout as paged_decode.c: (num_kv_heads, num_blocks, block_size, head_dim) contiguous.
 * The steps run in AVX2 here, or in AVX-512 (paged_prefill_avx512.c) where the CPU has it and
 * head_dim % 16 == 0; both keep one reduction order per row, whatever the thread count.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <immintrin.h>
#include <stdint.h>

#include "paged_prefill.h"

#define MAX_GROUP 16
#define MAX_TILE 16   /* queries per task */

static const float zero_row[MAX_HEAD_DIM] __attribute__((aligned(32)));

/* Cephes-style exp on 8 lanes; inputs are <= 0 here (scores minus their running max). */
static inline __m256 exp256(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
    __m256 fx = _mm256_round_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)),
                                _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}

static inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    return _mm_cvtss_f32(_mm_add_ss(lo, _mm_movehdup_ps(lo)));
}

static inline float hmax(__m256 v) {
    __m128 lo = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_max_ps(lo, _mm_movehl_ps(lo, lo));
    return _mm_cvtss_f32(_mm_max_ss(lo, _mm_movehdup_ps(lo)));
}

/* Columns d .. d+7 of eight rows -> rows d .. d+7 of panel (row stride KEYS), at column t. */
static inline void transpose8(const float *const rows[8], int d, float *panel, int t) {
    __m256 r0 = _mm256_loadu_ps(rows[0] + d), r1 = _mm256_loadu_ps(rows[1] + d);
    __m256 r2 = _mm256_loadu_ps(rows[2] + d), r3 = _mm256_loadu_ps(rows[3] + d);
    __m256 r4 = _mm256_loadu_ps(rows[4] + d), r5 = _mm256_loadu_ps(rows[5] + d);
    __m256 r6 = _mm256_loadu_ps(rows[6] + d), r7 = _mm256_loadu_ps(rows[7] + d);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    float *p = panel + (long)d * KEYS + t;
    _mm256_store_ps(p + 0 * KEYS, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_store_ps(p + 1 * KEYS, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_store_ps(p + 2 * KEYS, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_store_ps(p + 3 * KEYS, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_store_ps(p + 4 * KEYS, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_store_ps(p + 5 * KEYS, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_store_ps(p + 6 * KEYS, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_store_ps(p + 7 * KEYS, _mm256_permute2f128_ps(s3, s7, 0x31));
}

/* Raw scores of rows r0 .. r1 against the panel into probs, two rows per pass over head_dim
 * (eight independent FMA chains, each panel load serving both rows). */
static inline void scores(const float *qs, const float *panel, int dh, int r0, int r1, float *probs) {
    for (int r = r0; r < r1; r += 2) {
        const int two = r + 1 < r1;
        const float *qa = qs + (long)r * dh, *qb = qs + (long)(r + two) * dh;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int d = 0; d < dh; d++) {
            const __m256 x = _mm256_broadcast_ss(qa + d), y = _mm256_broadcast_ss(qb + d);
            const float *k = panel + (long)d * KEYS;
            const __m256 k0 = _mm256_load_ps(k), k1 = _mm256_load_ps(k + 8);
            const __m256 k2 = _mm256_load_ps(k + 16), k3 = _mm256_load_ps(k + 24);
            a0 = _mm256_fmadd_ps(x, k0, a0), a1 = _mm256_fmadd_ps(x, k1, a1);
            a2 = _mm256_fmadd_ps(x, k2, a2), a3 = _mm256_fmadd_ps(x, k3, a3);
            b0 = _mm256_fmadd_ps(y, k0, b0), b1 = _mm256_fmadd_ps(y, k1, b1);
            b2 = _mm256_fmadd_ps(y, k2, b2), b3 = _mm256_fmadd_ps(y, k3, b3);
        }
        float *pa = probs + (long)r * KEYS, *pb = probs + (long)(r + two) * KEYS;
        if (two) {
            _mm256_store_ps(pb, b0), _mm256_store_ps(pb + 8, b1);
            _mm256_store_ps(pb + 16, b2), _mm256_store_ps(pb + 24, b3);
        }
        _mm256_store_ps(pa, a0), _mm256_store_ps(pa + 8, a1), _mm256_store_ps(pa + 16, a2), _mm256_store_ps(pa + 24, a3);
    }
}

/* One row's scores (in p), masked past `valid` keys, folded into its running max and sum; p
 * becomes the probabilities, and the accumulator's rescale factor is returned. */
static inline float softmax_step(int valid, float *m, float *l, float *p) {
    __m256 s0 = _mm256_load_ps(p), s1 = _mm256_load_ps(p + 8), s2 = _mm256_load_ps(p + 16), s3 = _mm256_load_ps(p + 24);
    const __m256 lane = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), lim = _mm256_set1_ps((float)valid);
    const __m256 k0 = _mm256_cmp_ps(lane, lim, _CMP_LT_OQ);
    const __m256 k1 = _mm256_cmp_ps(_mm256_add_ps(lane, _mm256_set1_ps(8)), lim, _CMP_LT_OQ);
    const __m256 k2 = _mm256_cmp_ps(_mm256_add_ps(lane, _mm256_set1_ps(16)), lim, _CMP_LT_OQ);
    const __m256 k3 = _mm256_cmp_ps(_mm256_add_ps(lane, _mm256_set1_ps(24)), lim, _CMP_LT_OQ);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    s0 = _mm256_blendv_ps(ninf, s0, k0), s1 = _mm256_blendv_ps(ninf, s1, k1);
    s2 = _mm256_blendv_ps(ninf, s2, k2), s3 = _mm256_blendv_ps(ninf, s3, k3);
    const float top = hmax(_mm256_max_ps(_mm256_max_ps(s0, s1), _mm256_max_ps(s2, s3)));
    const float m_new = top > *m ? top : *m;  /* finite: key 0 is in every row's first step */
    const float alpha = expf(*m - m_new);
    const __m256 mv = _mm256_set1_ps(m_new);
    s0 = _mm256_and_ps(exp256(_mm256_sub_ps(s0, mv)), k0), s1 = _mm256_and_ps(exp256(_mm256_sub_ps(s1, mv)), k1);
    s2 = _mm256_and_ps(exp256(_mm256_sub_ps(s2, mv)), k2), s3 = _mm256_and_ps(exp256(_mm256_sub_ps(s3, mv)), k3);
    _mm256_store_ps(p, s0), _mm256_store_ps(p + 8, s1), _mm256_store_ps(p + 16, s2), _mm256_store_ps(p + 24, s3);
    *l = *l * alpha + hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    *m = m_new;
    return alpha;
}

/* Two rows' accumulators over w (constant after inlining) 8-lane columns, kept in registers. */
static inline __attribute__((always_inline)) void accumulate_cols(
        float *aa, float *ab, const float *pa, const float *pb, __m256 xa, __m256 xb, int two, int e, const int w,
        const float *const *vrows, int n) {
    __m256 a[4], b[4];
    for (int u = 0; u < w; u++) {
        a[u] = _mm256_mul_ps(_mm256_load_ps(aa + e + 8 * u), xa);
        b[u] = _mm256_mul_ps(_mm256_load_ps(ab + e + 8 * u), xb);
    }
    for (int t = 0; t < n; t++) {
        const __m256 ca = _mm256_broadcast_ss(pa + t), cb = _mm256_broadcast_ss(pb + t);
        const float *v = vrows[t] + e;
        for (int u = 0; u < w; u++) {
            const __m256 vv = _mm256_loadu_ps(v + 8 * u);
            a[u] = _mm256_fmadd_ps(ca, vv, a[u]);
            b[u] = _mm256_fmadd_ps(cb, vv, b[u]);
        }
    }
    for (int u = 0; u < w; u++) {
        _mm256_store_ps(aa + e + 8 * u, a[u]);
        if (two) _mm256_store_ps(ab + e + 8 * u, b[u]);
    }
}

/* acc[r] = acc[r] * alpha[r] + sum_t p[r][t] v[t], two rows per pass over 32 columns. */
static inline void accumulate(float *acc, const float *probs, const float *alpha, int rows, int dh,
                              const float *const *vrows, int n) {
    for (int r = 0; r < rows; r += 2) {
        const int two = r + 1 < rows;
        const float *pa = probs + (long)r * KEYS, *pb = probs + (long)(r + two) * KEYS;
        float *aa = acc + (long)r * dh, *ab = acc + (long)(r + two) * dh;
        const __m256 xa = _mm256_set1_ps(alpha[r]), xb = _mm256_set1_ps(alpha[r + two]);
        int e = 0;
        for (; e + 32 <= dh; e += 32) accumulate_cols(aa, ab, pa, pb, xa, xb, two, e, 4, vrows, n);
        for (; e < dh; e += 8) accumulate_cols(aa, ab, pa, pb, xa, xb, two, e, 1, vrows, n);
    }
}

/* One step of KEYS keys (n of them real) for a task's rows; row r sees the step's first
 * first_valid + r / group keys. */
static void step_avx2(const float *qs, const float *panel, float *probs, float *acc, float *m, float *l, int rows,
                      int group, int first_valid, int n, const float *const *vrows, int dh) {
    float alpha[MAX_ROWS];
    scores(qs, panel, dh, 0, rows, probs);
    for (int r = 0; r < rows; r++) {
        const int valid = first_valid + r / group;
        alpha[r] = softmax_step(valid < n ? valid : n, &m[r], &l[r], probs + (long)r * KEYS);
    }
    accumulate(acc, probs, alpha, rows, dh, vrows, n);
}

/* Whether the AVX-512 steps run here for this head_dim. */
int lc_prefill_wide(int dh) {
    __builtin_cpu_init();
    return dh % 16 == 0 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
}

/* q: (q_len, h, dh) with row stride q_stride; out: (q_len, h, dh) contiguous. variant: 0 picks
 * the widest this CPU runs, 1 the AVX2 steps, 2 the AVX-512 ones. Returns 0, -1 on a shape or
 * variant this kernel does not take (dh % 8, dh > 256, h / kvh > 16), -2 when out of memory. */
int lc_paged_prefill(const float *q, long q_stride, int q_len, int seq_len, int h, int kvh, int dh,
                     const float *k_cache, const float *v_cache, int num_blocks, int bs, const int32_t *table,
                     float scale, float *out, int nthreads, int variant) {
    const int group = h / kvh;
    if (dh % 8 || dh > MAX_HEAD_DIM || h % kvh || group > MAX_GROUP || q_len > seq_len) return -1;
    const int wide = variant == 1 ? 0 : lc_prefill_wide(dh);
    if (variant == 2 && !wide) return -1;
    const int tile = MAX_ROWS / group < MAX_TILE ? MAX_ROWS / group : MAX_TILE;
    const int num_tiles = (q_len + tile - 1) / tile, base = seq_len - q_len;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        /* per thread: the query rows, their accumulators, the K panel and the step's probabilities */
        float *qs = aligned_alloc(64, sizeof(float) * MAX_ROWS * MAX_HEAD_DIM);
        float *acc = aligned_alloc(64, sizeof(float) * MAX_ROWS * MAX_HEAD_DIM);
        float *panel = aligned_alloc(64, sizeof(float) * MAX_HEAD_DIM * KEYS);
        float *probs = aligned_alloc(64, sizeof(float) * MAX_ROWS * KEYS);
        if (!qs || !acc || !panel || !probs) {
            #pragma omp atomic write
            failed = 1;
        } else {
            memset(panel, 0, sizeof(float) * MAX_HEAD_DIM * KEYS);  /* columns past a short step stay finite */
        }
        #pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < num_tiles * kvh; task++) {
            if (!qs || !acc || !panel || !probs) continue;
            const int c = task % kvh, i0 = (num_tiles - 1 - task / kvh) * tile;  /* longest tiles first */
            const int nq = q_len - i0 < tile ? q_len - i0 : tile, rows = nq * group;
            const int kend = base + i0 + nq;  /* the tile's last query sees keys < kend */
            const float *kh = k_cache + (long)c * num_blocks * bs * dh;
            const float *vh = v_cache + (long)c * num_blocks * bs * dh;
            float m[MAX_ROWS], l[MAX_ROWS];
            for (int i = 0; i < nq; i++)
                for (int j = 0; j < group; j++) {
                    const float *src = q + (long)(i0 + i) * q_stride + (long)(c * group + j) * dh;
                    float *dst = qs + (long)(i * group + j) * dh;
                    for (int d = 0; d < dh; d++) dst[d] = src[d] * scale;
                }
            for (int r = 0; r < rows; r++) m[r] = -INFINITY, l[r] = 0.0f;
            memset(acc, 0, sizeof(float) * rows * dh);
            for (int t0 = 0; t0 < kend; t0 += KEYS) {
                const int n = kend - t0 < KEYS ? kend - t0 : KEYS;
                const float *krows[KEYS], *vrows[KEYS];
                for (int t = 0, block = t0 / bs, at = t0 % bs; t < KEYS; t++) {  /* no division per key */
                    const long row = t < n ? (long)table[block] * bs + at : -1;
                    krows[t] = row < 0 ? zero_row : kh + row * dh;
                    vrows[t] = row < 0 ? zero_row : vh + row * dh;
                    if (++at == bs) at = 0, block++;
                }
                for (int t = 0; t < n; t += 8)
                    for (int d = 0; d < dh; d += 8) transpose8(krows + t, d, panel, t);
                (wide ? lc_prefill_step_avx512 : step_avx2)(qs, panel, probs, acc, m, l, rows, group,
                                                            base + i0 + 1 - t0, n, vrows, dh);
            }
            for (int i = 0; i < nq; i++)
                for (int j = 0; j < group; j++) {
                    const int r = i * group + j;
                    const __m256 inv = _mm256_set1_ps(1.0f / l[r]);
                    float *dst = out + ((long)(i0 + i) * h + c * group + j) * dh;
                    for (int d = 0; d < dh; d += 8)
                        _mm256_storeu_ps(dst + d, _mm256_mul_ps(_mm256_load_ps(acc + (long)r * dh + d), inv));
                }
        }
        free(qs), free(acc), free(panel), free(probs);
    }
    return failed ? -2 : 0;
}
