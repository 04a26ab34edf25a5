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
 *   avx512vnni: 512-bit, two weight chunks per register: a permute gives each half its own
 *     4 activation bytes, and the halves' sums are added at the end of the block.
 *   avxvnni (VEX, Alder Lake+, Zen 5) and avx512vnni_ymm (EVEX): the AVX2 loop with vpdpbusd.
 */
#include <string.h>

#include "quant_gemm.h"

#define T512 "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
#define AI __attribute__((always_inline))

/* ---- 512-bit: registers hold chunks (c, c + 1); chunk c pairs with activation dword c ---- */

static inline AI __attribute__((target(T512))) __m512i dword_pair(__m512i x, int c) {
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(c, c, c, c, c, c, c, c,
                                                      c + 1, c + 1, c + 1, c + 1, c + 1, c + 1, c + 1, c + 1), x);
}

static inline AI __attribute__((target(T512))) __m256i fold_halves(__m512i s) {
    return _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
}

static inline AI __attribute__((target(T512))) __m512i load_block(const int8_t *x) {
    return _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)x));
}

static inline AI __attribute__((target(T512))) void q4_dots_zmm(const uint8_t *wb, const int8_t *x, int k,
                                                                 const int mt, __m256i *dot) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    const __m512i v01 = _mm512_loadu_si512(wb), v23 = _mm512_loadu_si512(wb + 64);
    /* low nibbles are inputs 4 c + e (dwords 0..3), high nibbles 16 + 4 c + e (dwords 4..7) */
    const __m512i lo01 = _mm512_and_si512(v01, low), hi01 = _mm512_and_si512(_mm512_srli_epi16(v01, 4), low);
    const __m512i lo23 = _mm512_and_si512(v23, low), hi23 = _mm512_and_si512(_mm512_srli_epi16(v23, 4), low);
    for (int t = 0; t < mt; t++) {
        const __m512i xb = load_block(x + (long)t * k);
        __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo01, dword_pair(xb, 0));
        s = _mm512_dpbusd_epi32(s, lo23, dword_pair(xb, 2));
        s = _mm512_dpbusd_epi32(s, hi01, dword_pair(xb, 4));
        s = _mm512_dpbusd_epi32(s, hi23, dword_pair(xb, 6));
        dot[t] = fold_halves(s);
    }
}

static inline AI __attribute__((target(T512))) void q8_dots_zmm(const int8_t *wb, const int8_t *x, int k,
                                                                 const int32_t *qs, int nb, const int mt,
                                                                 __m256i *dot) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i u[4];
    for (int p = 0; p < 4; p++) u[p] = _mm512_xor_si512(_mm512_loadu_si512(wb + 64 * p), flip);
    for (int t = 0; t < mt; t++) {
        const __m512i xb = load_block(x + (long)t * k);
        __m512i s = _mm512_setzero_si512();
        for (int p = 0; p < 4; p++) s = _mm512_dpbusd_epi32(s, u[p], dword_pair(xb, 2 * p));
        dot[t] = _mm256_sub_epi32(fold_halves(s), _mm256_set1_epi32(128 * qs[(long)t * nb]));
    }
}

#define OCTETS_TARGET T512
#define OCTETS_SUFFIX avx512vnni
#define Q4_DOTS(wb, x, k, mt, dot) q4_dots_zmm(wb, x, k, mt, dot)
#define Q8_DOTS(wb, x, k, qs, nb, mt, dot) q8_dots_zmm(wb, x, k, qs, nb, mt, dot)
#include "quant_octets.h"

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
