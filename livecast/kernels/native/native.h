/* What the C kernels share: one quantized linear's description, and the entry points that the
 * fused decoder (decode_layers.c) calls in the other files. */
#pragma once
#include <stdint.h>

typedef struct {
    int bits;  /* 4: q4 layout (scales, mins per group of g), 8: q8 layout (scales per 32) */
    int n, k, g;
    const void *w;
    const uint16_t *scales, *mins;
} lc_linear;

int lc_linear_apply(const lc_linear *l, const float *x, long ldx, int m, float *out, long ldo, int nthreads);

void lc_kv_write(const float *k, long k_stride, const float *v, long v_stride, int num_tokens, int kvh, int dh,
                 float *k_cache, float *v_cache, long rows_per_head, const int64_t *slots);

int lc_paged_decode(const float *q, long q_stride, int s, int h, int kvh, int dh,
                    const float *k_cache, const float *v_cache, int num_blocks, int bs,
                    const int32_t *tables, int table_stride, const int32_t *context_lens,
                    float scale, float *out, int nthreads);
