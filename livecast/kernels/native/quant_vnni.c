/* The VNNI variants of quant_gemm.c's int8 block dots: vpdpbusd multiplies u8 by s8 and adds
 * each 4 products into an int32 lane in one instruction, where AVX2 needs vpmaddubsw, vpmaddwd
 * and an add. Compiled with function-level target attributes (the library's base flags stay
 * AVX2, so it still loads on AVX2-only machines); quant_gemm.c calls them only where the CPU
 * runs them.
 *   q4: codes are u8 (0..15) and activations s8: the operands vpdpbusd takes, as they are.
 *   q8: both are s8. The codes go in as w + 128 (u8, an xor), and 128 * sum(x) per block, from
 *       the activations' integer sums, comes off: sum((w + 128) x) - 128 sum(x) = sum(w x).
 * Every int32 block dot equals the AVX2 one exactly (no lane can overflow: |dot| < 2^22), and the
 * float math after it is quant_octets.h's, so the outputs are bit-identical.
 *   avxvnni (VEX, Alder Lake+, Zen 5) and avx512vnni_ymm (EVEX): the AVX2 loop with vpdpbusd.
 *   avx512vnni: two row-octets at a time in 512-bit registers (an odd last octet: the ymm loop),
 *     the float math lane for lane the same as quant_octets.h's.
 */
#include <string.h>

#include "quant_gemm.h"

#define T512 "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
#define AI __attribute__((always_inline))

/* ---- 512-bit: two row-octets (16 rows) per register, chunk c of octet j below that of j + 1,
 * so one broadcast of 4 activation bytes serves both; scales and outputs are 16 lanes ---- */

static inline AI __attribute__((target(T512))) __m512i two_octets(const void *lo, const void *hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)lo)),
                              _mm256_loadu_si256((const __m256i *)hi), 1);
}

static inline AI __attribute__((target(T512))) __m512 two_scales(const uint16_t *lo, const uint16_t *hi) {
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)lo)),
                                                   _mm_loadu_si128((const __m128i *)hi), 1));
}

static inline AI __attribute__((target(T512))) __m512i bcast4_zmm(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

static inline AI __attribute__((target(T512))) void q4_pair_tile(
        const uint8_t *w, const uint16_t *sc, const uint16_t *mn, int k, int g,
        const int8_t *q, const float *d, const float *gs, const int mt, float *out, long ldo) {
    const int nb = k / QK, bpg = g / QK, ng = k / g;
    const uint8_t *w2 = w + (long)nb * 128;
    const __m512i low = _mm512_set1_epi8(0x0F);
    __m512 acc[TILE_M];
    for (int t = 0; t < mt; t++) acc[t] = _mm512_setzero_ps();
    for (int gi = 0; gi < ng; gi++) {
        const __m512 sw = two_scales(sc + gi * 8, sc + (long)ng * 8 + gi * 8);
        const __m512 mw = two_scales(mn + gi * 8, mn + (long)ng * 8 + gi * 8);
        for (int bi = 0; bi < bpg; bi++) {
            const int b = gi * bpg + bi;
            __m512i dot[TILE_M];
            for (int t = 0; t < mt; t++) dot[t] = _mm512_setzero_si512();
            for (int c = 0; c < 4; c++) {
                const __m512i v = two_octets(w + (long)b * 128 + c * 32, w2 + (long)b * 128 + c * 32);
                const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                for (int t = 0; t < mt; t++) {
                    const int8_t *xb = q + (long)t * k + b * QK;
                    dot[t] = _mm512_dpbusd_epi32(dot[t], lo, bcast4_zmm(xb + 4 * c));
                    dot[t] = _mm512_dpbusd_epi32(dot[t], hi, bcast4_zmm(xb + 16 + 4 * c));
                }
            }
            for (int t = 0; t < mt; t++)
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t]), _mm512_mul_ps(sw, _mm512_set1_ps(d[t * nb + b])), acc[t]);
        }
        for (int t = 0; t < mt; t++) acc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(gs[t * ng + gi]), acc[t]);
    }
    for (int t = 0; t < mt; t++) _mm512_storeu_ps(out + t * ldo, acc[t]);
}

static inline AI __attribute__((target(T512))) void q8_pair_tile(
        const int8_t *w, const uint16_t *sc, int k, const int8_t *q, const int32_t *qs, const float *d,
        const int mt, float *out, long ldo) {
    const int nb = k / QK;
    const int8_t *w2 = w + (long)nb * 256;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512 acc[TILE_M];
    for (int t = 0; t < mt; t++) acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const __m512 sw = two_scales(sc + b * 8, sc + (long)nb * 8 + b * 8);
        __m512i dot[TILE_M];
        for (int t = 0; t < mt; t++) dot[t] = _mm512_set1_epi32(-128 * qs[(long)t * nb + b]);
        for (int c = 0; c < 8; c++) {
            const __m512i u = _mm512_xor_si512(two_octets(w + (long)b * 256 + c * 32, w2 + (long)b * 256 + c * 32), flip);
            for (int t = 0; t < mt; t++)
                dot[t] = _mm512_dpbusd_epi32(dot[t], u, bcast4_zmm(q + (long)t * k + b * QK + 4 * c));
        }
        for (int t = 0; t < mt; t++)
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t]), _mm512_mul_ps(sw, _mm512_set1_ps(d[t * nb + b])), acc[t]);
    }
    for (int t = 0; t < mt; t++) _mm512_storeu_ps(out + t * ldo, acc[t]);
}

__attribute__((target(T512))) void q4_pairs_avx512vnni(
        const uint8_t *w, const uint16_t *sc, const uint16_t *mn, int k, int g,
        const int8_t *q, const float *d, const float *gs, int mt, float *out, long ldo) {
    switch (mt) {
    case 4: q4_pair_tile(w, sc, mn, k, g, q, d, gs, 4, out, ldo); break;
    case 3: q4_pair_tile(w, sc, mn, k, g, q, d, gs, 3, out, ldo); break;
    case 2: q4_pair_tile(w, sc, mn, k, g, q, d, gs, 2, out, ldo); break;
    default: q4_pair_tile(w, sc, mn, k, g, q, d, gs, 1, out, ldo); break;
    }
}

__attribute__((target(T512))) void q8_pairs_avx512vnni(
        const int8_t *w, const uint16_t *sc, int k, const int8_t *q, const int32_t *qs, const float *d,
        int mt, float *out, long ldo) {
    switch (mt) {
    case 4: q8_pair_tile(w, sc, k, q, qs, d, 4, out, ldo); break;
    case 3: q8_pair_tile(w, sc, k, q, qs, d, 3, out, ldo); break;
    case 2: q8_pair_tile(w, sc, k, q, qs, d, 2, out, ldo); break;
    default: q8_pair_tile(w, sc, k, q, qs, d, 1, out, ldo); break;
    }
}

/* ---- 256-bit: the AVX2 loop shape, one vpdpbusd per chunk and activation row ---- */

#define DOTS_YMM(NAME, TARGET, DPBUSD)                                                                \
static inline AI __attribute__((target(TARGET))) void q4_dots_##NAME(                                 \
        const uint8_t *wb, const int8_t *x, int k, const int mt, __m256i *dot) {                        \
    const __m256i low = _mm256_set1_epi8(0x0F);                                                       \
    for (int t = 0; t < mt; t++) dot[t] = _mm256_setzero_si256();                                     \
    for (int c = 0; c < 4; c++) {                                                                     \
        const __m256i v = _mm256_loadu_si256((const __m256i *)(wb + c * 32));                         \
        const __m256i lo = _mm256_and_si256(v, low);                                                  \
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);                            \
        for (int t = 0; t < mt; t++) {                                                                \
            dot[t] = DPBUSD(dot[t], lo, bcast4(x + (long)t * k + 4 * c));                             \
            dot[t] = DPBUSD(dot[t], hi, bcast4(x + (long)t * k + 16 + 4 * c));                        \
        }                                                                                             \
    }                                                                                                 \
}                                                                                                     \
static inline AI __attribute__((target(TARGET))) void q8_dots_##NAME(                                 \
        const int8_t *wb, const int8_t *x, int k, const int32_t *qs, int nb, const int mt, __m256i *dot) { \
    const __m256i flip = _mm256_set1_epi8((char)0x80);                                                \
    for (int t = 0; t < mt; t++) dot[t] = _mm256_set1_epi32(-128 * qs[(long)t * nb]);                 \
    for (int c = 0; c < 8; c++) {                                                                     \
        const __m256i u = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(wb + c * 32)), flip); \
        for (int t = 0; t < mt; t++) dot[t] = DPBUSD(dot[t], u, bcast4(x + (long)t * k + 4 * c));      \
    }                                                                                                 \
}

#define TVEX "avx2,fma,f16c,avxvnni"
DOTS_YMM(vex, TVEX, _mm256_dpbusd_avx_epi32)
DOTS_YMM(evex, T512, _mm256_dpbusd_epi32)

#define OCTETS_TARGET TVEX
#define OCTETS_SUFFIX avxvnni
#define Q4_DOTS(wb, x, k, mt, dot) q4_dots_vex(wb, x, k, mt, dot)
#define Q8_DOTS(wb, x, k, qs, nb, mt, dot) q8_dots_vex(wb, x, k, qs, nb, mt, dot)
#include "quant_octets.h"

#define OCTETS_TARGET T512
#define OCTETS_SUFFIX avx512vnni_ymm
#define Q4_DOTS(wb, x, k, mt, dot) q4_dots_evex(wb, x, k, mt, dot)
#define Q8_DOTS(wb, x, k, qs, nb, mt, dot) q8_dots_evex(wb, x, k, qs, nb, mt, dot)
#include "quant_octets.h"
