/* What the quantized GEMM's variants share: the per-row-octet kernels each instruction-set
 * variant provides (quant_gemm.c: AVX2; quant_vnni.c: AVX-VNNI and AVX-512 VNNI), which
 * quant_gemm.c's drivers pick from at run time. Every variant computes the same int32 block dots
 * and the same float32 operations in the same order, so their outputs are bit-identical. */
#pragma once
#include "q8_act.h"

#define TILE_M 4

/* One row-octet (8 output rows) against mt <= TILE_M activation rows (stride k codes, nb = k/32
 * blocks of scales d, integer sums qs, and q4's per-group sums gs), into out[t * ldo + 0..7]. */
typedef void q4_octets_fn(const uint8_t *w, const uint16_t *sc, const uint16_t *mn, int k, int g,
                          const int8_t *q, const float *d, const float *gs, int mt, float *out, long ldo);
typedef void q8_octets_fn(const int8_t *w, const uint16_t *sc, int k, const int8_t *q, const int32_t *qs,
                          const float *d, int mt, float *out, long ldo);

#define HIDDEN __attribute__((visibility("hidden")))
HIDDEN q4_octets_fn q4_octets_avx2, q4_octets_avxvnni, q4_octets_avx512vnni_ymm;
HIDDEN q8_octets_fn q8_octets_avx2, q8_octets_avxvnni, q8_octets_avx512vnni_ymm;
/* The same for two consecutive octets (16 rows: w, sc, mn, out continue into the next octet). */
HIDDEN q4_octets_fn q4_pairs_avx512vnni;
HIDDEN q8_octets_fn q8_pairs_avx512vnni;

static inline __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
