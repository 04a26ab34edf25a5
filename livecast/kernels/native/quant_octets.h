/* The row-octet loops of quant_gemm.c, instantiated once per instruction-set variant: include
 * with OCTETS_TARGET (a target attribute string), OCTETS_SUFFIX, and the variant's block dots
 *   Q4_DOTS(wb, x, k, mt, dot): one q4 block (128 bytes at wb) against the mt activation blocks
 *     x + t * k -> dot[t], the 8 rows' int32 sums of code * activation;
 *   Q8_DOTS(wb, x, k, qs, nb, mt, dot): the same for a q8 block (256 bytes), with qs + t * nb
 *     the activation blocks' integer sums.
 * Everything after the int32 dots is here, once, so the variants' float math is the same. */
#define OCTETS_CAT_(a, b) a##b
#define OCTETS_CAT(a, b) OCTETS_CAT_(a, b)
#define OCTETS_TILE(name) OCTETS_CAT(name, OCTETS_SUFFIX)

static inline __attribute__((always_inline, target(OCTETS_TARGET))) void OCTETS_TILE(q4_tile_)(
        const uint8_t *w, const uint16_t *sc, const uint16_t *mn, int k, int g,
        const int8_t *q, const float *d, const float *gs, const int mt, float *out, long ldo) {
    const int nb = k / QK, bpg = g / QK, ng = k / g;
    __m256 acc[TILE_M];
    for (int t = 0; t < mt; t++) acc[t] = _mm256_setzero_ps();
    for (int gi = 0; gi < ng; gi++) {
        const __m256 sw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + gi * 8)));
        const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mn + gi * 8)));
        for (int bi = 0; bi < bpg; bi++) {
            const int b = gi * bpg + bi;
            __m256i dot[TILE_M];
            Q4_DOTS(w + (long)b * 128, q + b * QK, k, mt, dot);
            for (int t = 0; t < mt; t++)
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[t]), _mm256_mul_ps(sw, _mm256_set1_ps(d[t * nb + b])), acc[t]);
        }
        for (int t = 0; t < mt; t++) acc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(gs[t * ng + gi]), acc[t]);
    }
    for (int t = 0; t < mt; t++) _mm256_storeu_ps(out + t * ldo, acc[t]);
}

static inline __attribute__((always_inline, target(OCTETS_TARGET))) void OCTETS_TILE(q8_tile_)(
        const int8_t *w, const uint16_t *sc, int k, const int8_t *q, const int32_t *qs, const float *d,
        const int mt, float *out, long ldo) {
    const int nb = k / QK;
    __m256 acc[TILE_M];
    for (int t = 0; t < mt; t++) acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const __m256 sw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + b * 8)));
        __m256i dot[TILE_M];
        Q8_DOTS(w + (long)b * 256, q + b * QK, k, qs + b, nb, mt, dot);
        for (int t = 0; t < mt; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[t]), _mm256_mul_ps(sw, _mm256_set1_ps(d[t * nb + b])), acc[t]);
    }
    for (int t = 0; t < mt; t++) _mm256_storeu_ps(out + t * ldo, acc[t]);
}

/* constant tile heights, so the accumulators stay in registers */
__attribute__((target(OCTETS_TARGET))) void OCTETS_TILE(q4_octets_)(
        const uint8_t *w, const uint16_t *sc, const uint16_t *mn, int k, int g,
        const int8_t *q, const float *d, const float *gs, int mt, float *out, long ldo) {
    switch (mt) {
    case 4: OCTETS_TILE(q4_tile_)(w, sc, mn, k, g, q, d, gs, 4, out, ldo); break;
    case 3: OCTETS_TILE(q4_tile_)(w, sc, mn, k, g, q, d, gs, 3, out, ldo); break;
    case 2: OCTETS_TILE(q4_tile_)(w, sc, mn, k, g, q, d, gs, 2, out, ldo); break;
    default: OCTETS_TILE(q4_tile_)(w, sc, mn, k, g, q, d, gs, 1, out, ldo); break;
    }
}

__attribute__((target(OCTETS_TARGET))) void OCTETS_TILE(q8_octets_)(
        const int8_t *w, const uint16_t *sc, int k, const int8_t *q, const int32_t *qs, const float *d,
        int mt, float *out, long ldo) {
    switch (mt) {
    case 4: OCTETS_TILE(q8_tile_)(w, sc, k, q, qs, d, 4, out, ldo); break;
    case 3: OCTETS_TILE(q8_tile_)(w, sc, k, q, qs, d, 3, out, ldo); break;
    case 2: OCTETS_TILE(q8_tile_)(w, sc, k, q, qs, d, 2, out, ldo); break;
    default: OCTETS_TILE(q8_tile_)(w, sc, k, q, qs, d, 1, out, ldo); break;
    }
}

#undef OCTETS_TARGET
#undef OCTETS_SUFFIX
#undef Q4_DOTS
#undef Q8_DOTS
