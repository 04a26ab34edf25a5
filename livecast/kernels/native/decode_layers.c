/* A whole decode step of a Llama-family decoder stack in one call, for quantized weights on
 * x86 CPUs: per layer, RMSNorm (+ residual) -> q|k|v -> rotary -> KV write -> paged attention
 * -> o -> RMSNorm (+ residual) -> gate|up -> SiLU(gate) * up -> down. Every token is a decode
 * (one query of its own sequence, row t of the block tables). What Python would dispatch as ~20
 * small ops per layer runs here as plain loops over float32 rows; the four GEMMs and the
 * attention use their own kernels (quant_gemm.c, paged_decode.c) with OpenMP.
 *
 * The engine's torch path (engine/models/llama.py) computes the same step and is the reference.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <immintrin.h>

#include "native.h"

typedef struct {
    const float *input_norm, *post_norm;  /* (hidden,) */
    lc_linear qkv, o, gate_up, down;
    float *k_cache, *v_cache;  /* head-major (kv_heads, num_blocks, block_size, head_dim) */
} lc_layer;

typedef struct {
    int hidden, heads, kv_heads, head_dim, intermediate, num_blocks, block_size, max_positions;
    float eps, scale;
    const float *cos_sin;  /* (max_positions, head_dim): cos | sin halves */
} lc_model;

typedef struct {
    int num_tokens, table_stride;
    const int64_t *positions, *slots;
    const int32_t *tables, *context_lens;
} lc_step;

/* out = norm(x) * w in float32, as HF's LlamaRMSNorm: x * rsqrt(mean(x^2) + eps) * w. */
static void rms_norm(const float *x, const float *w, int dim, float eps, float *out) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= dim; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    float tmp[8], sum = 0.0f;
    _mm256_storeu_ps(tmp, acc);
    for (int j = 0; j < 8; j++) sum += tmp[j];
    for (; i < dim; i++) sum += x[i] * x[i];
    const float inv = 1.0f / sqrtf(sum / dim + eps);
    for (i = 0; i < dim; i++) out[i] = w[i] * (x[i] * inv);
}

static void rotate(float *x, const float *cos_sin, int dh) {  /* NeoX / rotate-half layout */
    const int half = dh / 2;
    const float *c = cos_sin, *s = cos_sin + half;
    for (int i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * c[i] - b * s[i];
        x[i + half] = b * c[i] + a * s[i];
    }
}

static inline float silu(float v) { return v / (1.0f + expf(-v)); }

/* hidden (T, hidden) in: the embeddings, or the previous stack's output when has_residual;
 * out: the last layer's MLP output, with `residual` (T, hidden) the stream before it, as the
 * torch path returns them (the caller applies the final norm to hidden + residual).
 * Returns 0, -3 for a position, slot or block id outside the tables (nothing computed), or the
 * first kernel's error (-1 shape, -2 memory). */
int lc_decode_layers(const lc_model *m, const lc_layer *layers, int num_layers, const lc_step *st,
                     float *hidden, float *residual, int has_residual, int nthreads) {
    const int T = st->num_tokens, H = m->hidden, dh = m->head_dim;
    const int q_size = m->heads * dh, kv_size = m->kv_heads * dh, qkv_n = q_size + 2 * kv_size;
    const int inter = m->intermediate;
    const long rows_per_head = (long)m->num_blocks * m->block_size;
    for (int t = 0; t < T; t++) {  /* the engine never sends these; a bug must not write out of bounds */
        const int len = st->context_lens[t];
        if (st->positions[t] < 0 || st->positions[t] >= m->max_positions || st->slots[t] >= rows_per_head
                || len <= 0 || (long)(len - 1) / m->block_size >= st->table_stride)
            return -3;
        for (int b = 0; b <= (len - 1) / m->block_size; b++) {
            const int32_t block = st->tables[(long)t * st->table_stride + b];
            if (block < 0 || block >= m->num_blocks) return -3;
        }
    }
    float *normed = malloc(sizeof(float) * (size_t)T * H);
    float *qkv = malloc(sizeof(float) * (size_t)T * qkv_n);
    float *attn = malloc(sizeof(float) * (size_t)T * q_size);
    float *gate_up = malloc(sizeof(float) * (size_t)T * 2 * inter);
    int status = (!normed || !qkv || !attn || !gate_up) ? -2 : 0;
    for (int li = 0; li < num_layers && !status; li++) {
        const lc_layer *L = layers + li;
        /* 1. input norm, adding the previous layer's output into the residual stream */
        for (int t = 0; t < T; t++) {
            float *h = hidden + (long)t * H, *r = residual + (long)t * H;
            if (li == 0 && !has_residual) memcpy(r, h, sizeof(float) * H);
            else for (int i = 0; i < H; i++) r[i] += h[i];
            rms_norm(r, L->input_norm, H, m->eps, normed + (long)t * H);
        }
        /* 2. q|k|v, rotary on q and k heads, new K/V into the cache */
        if ((status = lc_linear_apply(&L->qkv, normed, H, T, qkv, qkv_n, nthreads))) break;
        for (int t = 0; t < T; t++) {
            const float *cs = m->cos_sin + st->positions[t] * dh;
            float *row = qkv + (long)t * qkv_n;
            for (int head = 0; head < m->heads + m->kv_heads; head++) rotate(row + head * dh, cs, dh);
        }
        lc_kv_write(qkv + q_size, qkv_n, qkv + q_size + kv_size, qkv_n, T, m->kv_heads, dh,
                    L->k_cache, L->v_cache, rows_per_head, st->slots);
        /* 3. attention over each sequence's cached tokens, then o */
        if ((status = lc_paged_decode(qkv, qkv_n, T, m->heads, m->kv_heads, dh, L->k_cache, L->v_cache,
                                      m->num_blocks, m->block_size, st->tables, st->table_stride,
                                      st->context_lens, m->scale, attn, nthreads))) break;
        if ((status = lc_linear_apply(&L->o, attn, q_size, T, hidden, H, nthreads))) break;
        /* 4. post-attention norm, MLP */
        for (int t = 0; t < T; t++) {
            float *h = hidden + (long)t * H, *r = residual + (long)t * H;
            for (int i = 0; i < H; i++) r[i] += h[i];
            rms_norm(r, L->post_norm, H, m->eps, normed + (long)t * H);
        }
        if ((status = lc_linear_apply(&L->gate_up, normed, H, T, gate_up, 2 * inter, nthreads))) break;
        for (int t = 0; t < T; t++) {  /* SiLU(gate) * up, into the gate half */
            float *g = gate_up + (long)t * 2 * inter;
            for (int i = 0; i < inter; i++) g[i] = silu(g[i]) * g[inter + i];
        }
        status = lc_linear_apply(&L->down, gate_up, 2 * inter, T, hidden, H, nthreads);
    }
    free(normed); free(qkv); free(attn); free(gate_up);
    return status;
}
