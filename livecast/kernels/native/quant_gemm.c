/* Weight-only quantized GEMMs for x86 CPUs with AVX2: out[m, n] = sum_k x[m, k] * W[n, k].
 *
 * Activations are quantized per call to int8 blocks of 32 (q8_act.h), so inner products are
 * integer (vpmaddubsw + vpmaddwd, as in ggml). Weights are interleaved 8 output rows at a time
 * (as llama.cpp's repacked CPU layouts are): one 32-byte load holds 4 consecutive inputs of each
 * of 8 rows, so a broadcast of 4 activation bytes yields the 8 rows' partial sums lane by lane,
 * with no horizontal sums, and the 8 rows' scales are one vector.
 *   q4: W[n, k] = code * scale[n, k / g] + min[n, k / g], codes 0..15. Per row-octet and block of
 *       32 inputs, 128 bytes: chunk c (0..3) byte 4 i + e holds row i's input 4 c + e in its low
 *       nibble and input 16 + 4 c + e in its high nibble. scales, mins: (N/8, K/g, 8) fp16.
 *   q8: W[n, k] = code * scale[n, k / 32], int8 codes. Per row-octet and block, 256 bytes: chunk
 *       c (0..7) byte 4 i + e holds row i's input 4 c + e. scales: (N/8, K/32, 8) fp16.
 * Weights are read once per call for all activation rows (tiles of 4). Row-octets are split
 * over OpenMP threads (the libgomp PyTorch loads, so both share one pool).
 *
 * The inner int8 dots come in variants (quant_gemm.h): AVX2 here, the baseline every machine
 * that loads the library runs; AVX-VNNI and AVX-512 VNNI (vpdpbusd) in quant_vnni.c, compiled
 * with function-level target attributes. One is picked when the library loads, from what the CPU
 * runs (the widest), and `lc_gemm_set_variant` switches (LIVECAST_GEMM_VARIANT, the tests).
 */
#include <stdlib.h>
#include <string.h>

#include "native.h"
#include "quant_gemm.h"

typedef struct {
    int8_t *q;
    float *d, *s, *gs;  /* block scales, block sums, per-weight-group sums */
    int32_t *qs;  /* integer block sums */
} act_q8;

static int act_quantize(const float *x, long ldx, int m, int k, int g, act_q8 *a) {
    const int nb = k / QK, ng = k / g, bpg = g / QK;
    a->q = malloc((size_t)m * k);
    a->d = malloc(sizeof(float) * (size_t)m * nb);
    a->s = malloc(sizeof(float) * (size_t)m * nb);
    a->gs = malloc(sizeof(float) * (size_t)m * ng);
    a->qs = malloc(sizeof(int32_t) * (size_t)m * nb);
    if (!a->q || !a->d || !a->s || !a->gs || !a->qs) return -2;
    quantize_rows_q8(x, ldx, m, k, a->q, a->d, a->s, a->qs);
    for (long i = 0; i < (long)m * ng; i++) {
        float sum = 0.0f;
        for (int b = 0; b < bpg; b++) sum += a->s[i * bpg + b];
        a->gs[i] = sum;
    }
    return 0;
}

static void act_free(act_q8 *a) {
    free(a->q); free(a->d); free(a->s); free(a->gs); free(a->qs);
}

/* AVX2: vpmaddubsw (u8 x s8 -> int16 pairs) + vpmaddwd against ones (-> int32). */
static inline __attribute__((always_inline)) void q4_dots_avx2(const uint8_t *wb, const int8_t *x, int k,
                                                                const int mt, __m256i *dot) {
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256i sum[TILE_M];
    for (int t = 0; t < mt; t++) sum[t] = _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(wb + c * 32));
        const __m256i lo = _mm256_and_si256(v, low);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        for (int t = 0; t < mt; t++) {  /* |sum| <= 8 * 2 * 15 * 127 < 2^15: no int16 overflow */
            const int8_t *xb = x + (long)t * k;
            sum[t] = _mm256_add_epi16(sum[t], _mm256_maddubs_epi16(lo, bcast4(xb + 4 * c)));
            sum[t] = _mm256_add_epi16(sum[t], _mm256_maddubs_epi16(hi, bcast4(xb + 16 + 4 * c)));
        }
    }
    for (int t = 0; t < mt; t++) dot[t] = _mm256_madd_epi16(sum[t], ones);
}

/* s8 x s8 as |w| x sign(x, w); a pair's |sum| <= 2 * 128 * 127 < 2^15, so maddubs never saturates */
static inline __attribute__((always_inline)) void q8_dots_avx2(const int8_t *wb, const int8_t *x, int k,
                                                                const int mt, __m256i *dot) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int t = 0; t < mt; t++) dot[t] = _mm256_setzero_si256();
    for (int c = 0; c < 8; c++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(wb + c * 32));
        const __m256i vabs = _mm256_sign_epi8(v, v);
        for (int t = 0; t < mt; t++) {
            const __m256i p = _mm256_maddubs_epi16(vabs, _mm256_sign_epi8(bcast4(x + (long)t * k + 4 * c), v));
            dot[t] = _mm256_add_epi32(dot[t], _mm256_madd_epi16(p, ones));
        }
    }
}

#define OCTETS_TARGET "avx2,fma,f16c"
#define OCTETS_SUFFIX avx2
#define Q4_DOTS(wb, x, k, mt, dot) q4_dots_avx2(wb, x, k, mt, dot)
#define Q8_DOTS(wb, x, k, qs, nb, mt, dot) q8_dots_avx2(wb, x, k, mt, dot)
#include "quant_octets.h"

/* The variants, widest first: the first this CPU runs is picked at load. __builtin_cpu_supports
 * also checks that the OS saves the registers. */
enum { ISA_AVX2, ISA_AVXVNNI, ISA_AVX512VNNI };

typedef struct {
    const char *name;
    int isa, by_name_only;
    q4_octets_fn *q4, *q4_pair;  /* one octet; two at once where the variant has it (else NULL) */
    q8_octets_fn *q8, *q8_pair;
} gemm_variant;

static const gemm_variant VARIANTS[] = {
    {"avx512vnni", ISA_AVX512VNNI, 0, q4_octets_avx512vnni_ymm, q4_pairs_avx512vnni,
     q8_octets_avx512vnni_ymm, q8_pairs_avx512vnni},
    {"avxvnni", ISA_AVXVNNI, 0, q4_octets_avxvnni, NULL, q8_octets_avxvnni, NULL},
    /* the AVX-VNNI loops in EVEX form, so a machine with AVX-512 VNNI alone tests that code */
    {"avx512vnni_ymm", ISA_AVX512VNNI, 1, q4_octets_avx512vnni_ymm, NULL, q8_octets_avx512vnni_ymm, NULL},
    {"avx2", ISA_AVX2, 0, q4_octets_avx2, NULL, q8_octets_avx2, NULL},
};
#define NUM_VARIANTS (int)(sizeof(VARIANTS) / sizeof(VARIANTS[0]))

static int cpu_runs(int isa) {
    __builtin_cpu_init();
    switch (isa) {
    case ISA_AVX512VNNI:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
               && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    case ISA_AVXVNNI: return __builtin_cpu_supports("avxvnni");
    default: return 1;  /* AVX2: the library's own floor (build.py checks it before loading) */
    }
}

static const gemm_variant *active = &VARIANTS[NUM_VARIANTS - 1];

__attribute__((constructor)) static void pick_variant(void) {
    for (int v = 0; v < NUM_VARIANTS; v++)
        if (!VARIANTS[v].by_name_only && cpu_runs(VARIANTS[v].isa)) { active = &VARIANTS[v]; return; }
}

static int variant_index(const char *name) {
    for (int v = 0; v < NUM_VARIANTS; v++)
        if (name && !strcmp(name, VARIANTS[v].name)) return v;
    return -1;
}

const char *lc_gemm_variant(void) { return active->name; }

/* 1 when this CPU runs the named variant, 0 when it does not, -1 for an unknown name. */
int lc_gemm_variant_runs(const char *name) {
    const int v = variant_index(name);
    return v < 0 ? -1 : cpu_runs(VARIANTS[v].isa);
}

/* Returns 0, -1 for an unknown name, -2 when this CPU cannot run it (nothing changed then).
 * Not for use while a GEMM runs on another thread. */
int lc_gemm_set_variant(const char *name) {
    const int v = variant_index(name);
    if (v < 0) return -1;
    if (!cpu_runs(VARIANTS[v].isa)) return -2;
    active = &VARIANTS[v];
    return 0;
}

/* Returns 0, or -1 on a shape the layout cannot hold, -2 when out of memory. */
int lc_q4_gemm(const float *x, long ldx, int m, int k, const uint8_t *w, const uint16_t *scales,
               const uint16_t *mins, int n, int g, float *out, long ldo, int nthreads) {
    if (m < 0 || n <= 0 || n % 8 || k <= 0 || g <= 0 || g % QK || k % g) return -1;
    if (m == 0) return 0;  /* a step that needs no rows (e.g. no logits) */
    act_q8 a = {0};
    if (act_quantize(x, ldx, m, k, g, &a)) { act_free(&a); return -2; }
    const int nb = k / QK, ng = k / g;
    const gemm_variant *v = active;
    const int step = v->q4_pair ? 2 : 1, octets = n / 8;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int jj = 0; jj < (octets + step - 1) / step; jj++) {
        const int j = jj * step;
        q4_octets_fn *const q4 = step == 2 && j + 1 < octets ? v->q4_pair : v->q4;
        const uint8_t *w8 = w + (long)j * nb * 128;
        const uint16_t *s8 = scales + (long)j * ng * 8, *m8 = mins + (long)j * ng * 8;
        for (int m0 = 0; m0 < m; m0 += TILE_M) {
            const int8_t *q = a.q + (long)m0 * k;
            const float *d = a.d + (long)m0 * nb, *gs = a.gs + (long)m0 * ng;
            float *o = out + m0 * ldo + j * 8;
            q4(w8, s8, m8, k, g, q, d, gs, m - m0 < TILE_M ? m - m0 : TILE_M, o, ldo);
        }
    }
    act_free(&a);
    return 0;
}

int lc_q8_gemm(const float *x, long ldx, int m, int k, const int8_t *w, const uint16_t *scales,
               int n, float *out, long ldo, int nthreads) {
    if (m < 0 || n <= 0 || n % 8 || k <= 0 || k % QK) return -1;
    if (m == 0) return 0;
    act_q8 a = {0};
    if (act_quantize(x, ldx, m, k, QK, &a)) { act_free(&a); return -2; }
    const int nb = k / QK;
    const gemm_variant *v = active;
    const int step = v->q8_pair ? 2 : 1, octets = n / 8;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int jj = 0; jj < (octets + step - 1) / step; jj++) {
        const int j = jj * step;
        q8_octets_fn *const q8 = step == 2 && j + 1 < octets ? v->q8_pair : v->q8;
        const int8_t *w8 = w + (long)j * nb * 256;
        const uint16_t *s8 = scales + (long)j * nb * 8;
        for (int m0 = 0; m0 < m; m0 += TILE_M) {
            const int8_t *q = a.q + (long)m0 * k;
            const float *d = a.d + (long)m0 * nb;
            float *o = out + m0 * ldo + j * 8;
            q8(w8, s8, k, q, a.qs + (long)m0 * nb, d, m - m0 < TILE_M ? m - m0 : TILE_M, o, ldo);
        }
    }
    act_free(&a);
    return 0;
}

int lc_linear_apply(const lc_linear *l, const float *x, long ldx, int m, float *out, long ldo, int nthreads) {
    if (l->bits == 4)
        return lc_q4_gemm(x, ldx, m, l->k, l->w, l->scales, l->mins, l->n, l->g, out, ldo, nthreads);
    if (l->bits == 8)
        return lc_q8_gemm(x, ldx, m, l->k, l->w, l->scales, l->n, out, ldo, nthreads);
    return -1;
}
