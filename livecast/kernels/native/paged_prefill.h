/* What paged_prefill.c shares with its AVX-512 steps (paged_prefill_avx512.c). */
#pragma once

#define MAX_HEAD_DIM 256
#define KEYS 32       /* keys per step; the K panel is (head_dim, KEYS) */
#define MAX_ROWS 64   /* query rows (queries x group heads) per task */

/* One step over KEYS keys (n real) for a task's rows, all buffers 64-byte aligned: scores of
 * qs (rows, dh) against the panel into probs (rows, KEYS), online softmax into the running max
 * m and sum l, then acc (rows, dh) rescaled and += probs . v. Row r sees the step's first
 * first_valid + r / group keys. dh % 16 == 0. */
void lc_prefill_step_avx512(const float *qs, const float *panel, float *probs, float *acc, float *m, float *l,
                            int rows, int group, int first_valid, int n, const float *const *vrows, int dh);
