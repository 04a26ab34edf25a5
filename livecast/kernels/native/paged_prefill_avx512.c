/* The AVX-512 steps of the paged prefill attention (paged_prefill.c), compiled with a
 * function-level target so the library's base flags stay AVX2; paged_prefill.c calls them only
 * where the CPU runs them. Same panel layout and online softmax as the AVX2 steps, 16 lanes:
 * scores four rows at a time over the 32 keys (eight FMA chains), P.V two rows x 64 columns.
 */
#include <math.h>

#include <immintrin.h>

#include "paged_prefill.h"

#define T512 "avx2,fma,avx512f,avx512dq"
#define AI __attribute__((always_inline))

static inline AI __attribute__((target(T512))) __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    __m512 fx = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                     _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    __m512i n = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(n));
}

static inline AI __attribute__((target(T512))) void scores(const float *qs, const float *panel, int dh, int rows,
                                                           float *probs) {
    for (int r = 0; r < rows; r += 4) {
        const float *q0 = qs + (long)r * dh;  /* past the last row: re-read it, store nothing */
        const float *q1 = qs + (long)(r + 1 < rows ? r + 1 : r) * dh;
        const float *q2 = qs + (long)(r + 2 < rows ? r + 2 : r) * dh;
        const float *q3 = qs + (long)(r + 3 < rows ? r + 3 : r) * dh;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0, d0 = a0, d1 = a0;
        for (int d = 0; d < dh; d++) {
            const __m512 k0 = _mm512_load_ps(panel + (long)d * KEYS), k1 = _mm512_load_ps(panel + (long)d * KEYS + 16);
            const __m512 x0 = _mm512_set1_ps(q0[d]), x1 = _mm512_set1_ps(q1[d]);
            const __m512 x2 = _mm512_set1_ps(q2[d]), x3 = _mm512_set1_ps(q3[d]);
            a0 = _mm512_fmadd_ps(x0, k0, a0), a1 = _mm512_fmadd_ps(x0, k1, a1);
            b0 = _mm512_fmadd_ps(x1, k0, b0), b1 = _mm512_fmadd_ps(x1, k1, b1);
            c0 = _mm512_fmadd_ps(x2, k0, c0), c1 = _mm512_fmadd_ps(x2, k1, c1);
            d0 = _mm512_fmadd_ps(x3, k0, d0), d1 = _mm512_fmadd_ps(x3, k1, d1);
        }
        float *p = probs + (long)r * KEYS;
        _mm512_store_ps(p, a0), _mm512_store_ps(p + 16, a1);
        if (r + 1 < rows) _mm512_store_ps(p + KEYS, b0), _mm512_store_ps(p + KEYS + 16, b1);
        if (r + 2 < rows) _mm512_store_ps(p + 2 * KEYS, c0), _mm512_store_ps(p + 2 * KEYS + 16, c1);
        if (r + 3 < rows) _mm512_store_ps(p + 3 * KEYS, d0), _mm512_store_ps(p + 3 * KEYS + 16, d1);
    }
}

static inline __mmask16 first(int count) {
    return count <= 0 ? 0 : count >= 16 ? 0xFFFF : (__mmask16)((1u << count) - 1);
}

static inline AI __attribute__((target(T512))) float softmax_step(int valid, float *m, float *l, float *p) {
    const __mmask16 k0 = first(valid), k1 = first(valid - 16);
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 s0 = _mm512_mask_load_ps(ninf, k0, p), s1 = _mm512_mask_load_ps(ninf, k1, p + 16);
    const float top = _mm512_reduce_max_ps(_mm512_max_ps(s0, s1));
    const float m_new = top > *m ? top : *m;  /* finite: key 0 is in every row's first step */
    const float alpha = expf(*m - m_new);
    const __m512 mv = _mm512_set1_ps(m_new);
    s0 = _mm512_maskz_mov_ps(k0, exp512(_mm512_sub_ps(s0, mv)));
    s1 = _mm512_maskz_mov_ps(k1, exp512(_mm512_sub_ps(s1, mv)));
    _mm512_store_ps(p, s0), _mm512_store_ps(p + 16, s1);
    *l = *l * alpha + _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    *m = m_new;
    return alpha;
}

/* Two rows' accumulators over w (constant after inlining) 16-lane columns, kept in registers. */
static inline AI __attribute__((target(T512))) void accumulate_cols(
        float *aa, float *ab, const float *pa, const float *pb, __m512 xa, __m512 xb, int two, int e, const int w,
        const float *const *vrows, int n) {
    __m512 a[4], b[4];
    for (int u = 0; u < w; u++) {
        a[u] = _mm512_mul_ps(_mm512_load_ps(aa + e + 16 * u), xa);
        b[u] = _mm512_mul_ps(_mm512_load_ps(ab + e + 16 * u), xb);
    }
    for (int t = 0; t < n; t++) {
        const __m512 ca = _mm512_set1_ps(pa[t]), cb = _mm512_set1_ps(pb[t]);
        const float *v = vrows[t] + e;
        for (int u = 0; u < w; u++) {
            const __m512 vv = _mm512_loadu_ps(v + 16 * u);
            a[u] = _mm512_fmadd_ps(ca, vv, a[u]);
            b[u] = _mm512_fmadd_ps(cb, vv, b[u]);
        }
    }
    for (int u = 0; u < w; u++) {
        _mm512_store_ps(aa + e + 16 * u, a[u]);
        if (two) _mm512_store_ps(ab + e + 16 * u, b[u]);
    }
}

static inline AI __attribute__((target(T512))) void accumulate(float *acc, const float *probs, const float *alpha,
                                                               int rows, int dh, const float *const *vrows, int n) {
    for (int r = 0; r < rows; r += 2) {
        const int two = r + 1 < rows;
        const float *pa = probs + (long)r * KEYS, *pb = probs + (long)(r + two) * KEYS;
        float *aa = acc + (long)r * dh, *ab = acc + (long)(r + two) * dh;
        const __m512 xa = _mm512_set1_ps(alpha[r]), xb = _mm512_set1_ps(alpha[r + two]);
        int e = 0;
        for (; e + 64 <= dh; e += 64) accumulate_cols(aa, ab, pa, pb, xa, xb, two, e, 4, vrows, n);
        for (; e < dh; e += 16) accumulate_cols(aa, ab, pa, pb, xa, xb, two, e, 1, vrows, n);
    }
}

__attribute__((target(T512))) void lc_prefill_step_avx512(
        const float *qs, const float *panel, float *probs, float *acc, float *m, float *l, int rows, int group,
        int first_valid, int n, const float *const *vrows, int dh) {
    float alpha[MAX_ROWS];
    scores(qs, panel, dh, rows, probs);
    for (int r = 0; r < rows; r++) {
        const int valid = first_valid + r / group;
        alpha[r] = softmax_step(valid < n ? valid : n, &m[r], &l[r], probs + (long)r * KEYS);
    }
    accumulate(acc, probs, alpha, rows, dh, vrows, n);
}
