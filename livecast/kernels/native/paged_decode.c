/* Paged attention for single-token queries on x86 CPUs (AVX2), float32, reading K/V in place.
 *
 * Cache layout (engine.layers.attention, head-major): (num_kv_heads, num_blocks, block_size,
 * head_dim) contiguous. Sequence i's token t lives in block tables[i * table_stride + t / bs] at
 * row t % bs. The heads that share one KV head (GQA) are computed together, so each K/V row is
 * loaded once for all of them. One OpenMP task per (sequence, KV head).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <immintrin.h>
#include <stdint.h>

#include "native.h"

#define MAX_GROUP 16
#define MAX_HEAD_DIM 256

static inline float dot(const float *a, const float *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* Copy each token's new K and V rows (all KV heads) into their cache slots; slot -1 is padding. */
void lc_kv_write(const float *k, long k_stride, const float *v, long v_stride, int num_tokens, int kvh, int dh,
                 float *k_cache, float *v_cache, long rows_per_head, const int64_t *slots) {
    for (int i = 0; i < num_tokens; i++) {
        const long slot = slots[i];
        if (slot < 0) continue;
        for (int c = 0; c < kvh; c++) {
            memcpy(k_cache + ((long)c * rows_per_head + slot) * dh, k + i * k_stride + c * dh, sizeof(float) * dh);
            memcpy(v_cache + ((long)c * rows_per_head + slot) * dh, v + i * v_stride + c * dh, sizeof(float) * dh);
        }
    }
}

/* q: (s, h, dh) with row stride q_stride; out: (s, h, dh) contiguous. Returns 0, -1 on a shape
 * this kernel does not take (dh % 8, dh > 256, h / kvh > 16), -2 when out of memory. */
int lc_paged_decode(const float *q, long q_stride, int s, int h, int kvh, int dh,
                    const float *k_cache, const float *v_cache, int num_blocks, int bs,
                    const int32_t *tables, int table_stride, const int32_t *context_lens,
                    float scale, float *out, int nthreads) {
    const int group = h / kvh;
    if (dh % 8 || dh > MAX_HEAD_DIM || h % kvh || group > MAX_GROUP) return -1;
    int failed = 0;
    #pragma omp parallel for collapse(2) num_threads(nthreads) schedule(dynamic, 1)
    for (int i = 0; i < s; i++) {
        for (int c = 0; c < kvh; c++) {
            const int len = context_lens[i];
            const int32_t *table = tables + (long)i * table_stride;
            const float *kh = k_cache + (long)c * num_blocks * bs * dh;
            const float *vh = v_cache + (long)c * num_blocks * bs * dh;
            const float *qg = q + i * q_stride + (long)c * group * dh;
            float *og = out + ((long)i * h + (long)c * group) * dh;
            if (len <= 0) { memset(og, 0, sizeof(float) * group * dh); continue; }
            float *scores = malloc(sizeof(float) * (size_t)group * len);
            if (!scores) { failed = 1; continue; }
            for (int t = 0; t < len; t++) {
                const float *row = kh + ((long)table[t / bs] * bs + t % bs) * dh;
                for (int j = 0; j < group; j++) scores[j * len + t] = dot(qg + j * dh, row, dh) * scale;
            }
            for (int j = 0; j < group; j++) {  /* softmax, in place */
                float *sj = scores + (long)j * len, top = -INFINITY, sum = 0.0f;
                for (int t = 0; t < len; t++) top = sj[t] > top ? sj[t] : top;
                for (int t = 0; t < len; t++) { sj[t] = expf(sj[t] - top); sum += sj[t]; }
                const float inv = 1.0f / sum;
                for (int t = 0; t < len; t++) sj[t] *= inv;
            }
            float acc[MAX_GROUP * MAX_HEAD_DIM] __attribute__((aligned(32)));
            memset(acc, 0, sizeof(float) * group * dh);
            for (int t = 0; t < len; t++) {
                const float *row = vh + ((long)table[t / bs] * bs + t % bs) * dh;
                for (int j = 0; j < group; j++) {
                    const __m256 p = _mm256_set1_ps(scores[j * len + t]);
                    float *a = acc + j * dh;
                    for (int e = 0; e < dh; e += 8)
                        _mm256_store_ps(a + e, _mm256_fmadd_ps(p, _mm256_loadu_ps(row + e), _mm256_load_ps(a + e)));
                }
            }
            memcpy(og, acc, sizeof(float) * group * dh);
            free(scores);
        }
    }
    return failed ? -2 : 0;
}
