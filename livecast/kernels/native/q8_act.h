/* Activations quantized to int8 in blocks of 32 (ggml's Q8 scheme): x[j] ~= d * q[j], with the
 * block's d and s = d * sum(q) kept as float, and sum(q) as an integer (the VNNI kernels' offset
 * correction). The weight kernels dot int8 codes against these. */
#pragma once
#include <immintrin.h>
#include <stdint.h>

#define QK 32

static inline float hsum_ps(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

static inline float hmax_ps(__m256 v) {
    __m128 lo = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_max_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_max_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* One row of k floats (k % 32 == 0) -> k int8 codes in [-127, 127], k/32 scales d, sums s and
 * integer code sums qs. */
static inline void quantize_row_q8(const float *x, int k, int8_t *q, float *d, float *s, int32_t *qs) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int b = 0; b < k / QK; b++) {
        const float *xb = x + b * QK;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        __m256 amax = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                    _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        const float m = hmax_ps(amax);
        const float db = m / 127.0f;
        const __m256 inv = _mm256_set1_ps(m > 0.0f ? 127.0f / m : 0.0f);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, inv), _MM_FROUND_TO_NEAREST_INT));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, inv), _MM_FROUND_TO_NEAREST_INT));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, inv), _MM_FROUND_TO_NEAREST_INT));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, inv), _MM_FROUND_TO_NEAREST_INT));
        __m256i total = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
        t = _mm_hadd_epi32(t, t);
        t = _mm_hadd_epi32(t, t);
        /* packs interleave the 128-bit lanes; the permute restores element order */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + b * QK), p);
        d[b] = db;
        qs[b] = _mm_cvtsi128_si32(t);
        s[b] = db * (float)qs[b];
    }
}

/* Rows of x (row stride `ldx` floats) quantized into caller-provided buffers. */
static inline void quantize_rows_q8(const float *x, long ldx, int m, int k, int8_t *q, float *d, float *s,
                                    int32_t *qs) {
    for (int i = 0; i < m; i++) {
        const long o = (long)i * (k / QK);
        quantize_row_q8(x + i * ldx, k, q + (long)i * k, d + o, s + o, qs + o);
    }
}
