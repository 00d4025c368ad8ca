/* Causal grouped-query attention, blockwise with an online softmax (the
 * flash-attention recurrence): a block of queries of all heads that share a
 * kv head is stacked into one matrix, scored against one block of keys at a
 * time, and the running max, sum and output are rescaled as blocks arrive.
 * No buffer grows with the sequence length. */
#include <math.h>
#include <string.h>

#include "layers/layers.h"
#include "layers/layers_impl.h"

enum { ATTN_ROWS = 128, ATTN_KB = 256 }; /* stacked query rows, keys a block */

int64_t layer_attention_pairs(int T, int q0, int k0, int k1)
{
    /* a query at qp sees keys k0..min(k1-1, qp) */
    int64_t n = 0;
    for (int t = 0; t < T; t++) {
        int64_t last = (int64_t)q0 + t < k1 - 1 ? (int64_t)q0 + t : k1 - 1;
        if (last >= k0) n += last - k0 + 1;
    }
    return n;
}

LAYER_HOT static void attn_compute(const layer_attn_seq_t *sq, int H, int Hkv, int hd,
                                   float scale)
{
    float *out = sq->out, *lse = sq->lse;
    const float *q = sq->q, *kc = sq->kc, *vc = sq->vc;
    int T = sq->T, q0 = sq->q0, k0 = sq->k0, k1 = sq->k1, ldc = sq->ldc;
    if (T == 0) return;

    int G = H / Hkv;                 /* query heads per kv head */
    int QB = ATTN_ROWS / G > 0 ? ATTN_ROWS / G : 1; /* queries per block */
    if (QB > T) QB = T;
    int R = G * QB;                  /* stacked rows: (head in group, query) */
    /* on the stack: at most 256 x (2 hd + 514) floats, no failure path */
    float buf[(size_t)R * hd * 2 + (size_t)R * ATTN_KB + 2 * (size_t)R];
    float *Q = buf, *O = Q + (size_t)R * hd, *S = O + (size_t)R * hd;
    float *m = S + (size_t)R * ATTN_KB, *l = m + R;

    for (int g = 0; g < Hkv; g++) {
        const float *K = kc + (size_t)g * ldc * hd, *V = vc + (size_t)g * ldc * hd;
        for (int t0 = 0; t0 < T; t0 += QB) {
            int nq = T - t0 < QB ? T - t0 : QB;
            int rows = G * nq;
            for (int j = 0; j < G; j++)
                for (int i = 0; i < nq; i++)
                    memcpy(Q + ((size_t)j * nq + i) * hd,
                           q + ((size_t)(t0 + i) * H + g * G + j) * hd,
                           sizeof(float) * hd);
            memset(O, 0, sizeof(float) * rows * hd);
            for (int r = 0; r < rows; r++) m[r] = -INFINITY, l[r] = 0.0f;
            int qlast = q0 + t0 + nq - 1;
            int kend = qlast + 1 < k1 ? qlast + 1 : k1;
            for (int kb = k0; kb < kend; kb += ATTN_KB) {
                int nk_b = kend - kb < ATTN_KB ? kend - kb : ATTN_KB;
                layer_sgemm(true, rows, nk_b, hd, scale, Q, hd, K + (size_t)(kb - k0) * hd, hd,
                            0.0f, S, nk_b);
                for (int r = 0; r < rows; r++) {
                    float *sr = S + (size_t)r * nk_b;
                    int qp = q0 + t0 + r % nq;
                    int vis = qp - kb + 1; /* keys kb..qp visible */
                    if (vis > nk_b) vis = nk_b;
                    if (vis <= 0) { /* no key of this block is visible */
                        memset(sr, 0, sizeof(float) * nk_b);
                        continue;
                    }
                    float mx = layer_row_max(sr, vis, m[r]);
                    /* m[r] = -inf: nothing accumulated yet, corr = 0 */
                    float corr = m[r] == -INFINITY ? 0.0f : layer_exp(m[r] - mx);
                    for (int j = 0; j < vis; j++) sr[j] = layer_exp(sr[j] - mx);
                    float sum = layer_row_sum(sr, vis);
                    for (int j = vis; j < nk_b; j++) sr[j] = 0.0f;
                    l[r] = l[r] * corr + sum;
                    m[r] = mx;
                    if (corr != 1.0f)
                        for (int i = 0; i < hd; i++) O[(size_t)r * hd + i] *= corr;
                }
                layer_sgemm(false, rows, hd, nk_b, 1.0f, S, nk_b, V + (size_t)(kb - k0) * hd, hd,
                            1.0f, O, hd);
            }
            for (int j = 0; j < G; j++)
                for (int i = 0; i < nq; i++) {
                    int r = j * nq + i;
                    size_t t = (size_t)(t0 + i), h = (size_t)g * G + j;
                    float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
                    float *dst = out + (t * H + h) * hd;
                    for (int e = 0; e < hd; e++) dst[e] = O[(size_t)r * hd + e] * inv;
                    if (lse) lse[t * H + h] = l[r] > 0.0f ? m[r] + logf(l[r]) : -INFINITY;
                }
        }
    }
}

/* The work of one sequence: 4 hd FLOPs per visible pair and head (QK^T and
 * PV); q, out and the keys and values up to the last query read once. */
static void attn_work(const layer_attn_seq_t *s, int H, int Hkv, int hd, emu_dtype_t dt,
                      double *flops, double *bytes)
{
    int64_t pairs = layer_attention_pairs(s->T, s->q0, s->k0, s->k1);
    int kend = s->q0 + s->T < s->k1 ? s->q0 + s->T : s->k1; /* later keys: unseen */
    double nk = kend > s->k0 ? kend - s->k0 : 0;
    *flops += 4.0 * hd * H * (double)pairs;
    *bytes += (double)emu_dtype_size(dt) * (2.0 * s->T * H * hd + 2.0 * nk * Hkv * hd);
}

void layer_attention_batch(layer_ctx_t *c, const layer_attn_seq_t *s, int n, int H, int Hkv,
                           int hd, float scale)
{
    double flops = 0, bytes = 0;
    for (int i = 0; i < n; i++) attn_work(&s[i], H, Hkv, hd, c->dtype, &flops, &bytes);
    if (n > 0) emu_charge(c->dev, EMU_KERNEL_ATTN, flops, bytes);
    if (c->math)
        for (int i = 0; i < n; i++) attn_compute(&s[i], H, Hkv, hd, scale);
}

void layer_attention(layer_ctx_t *c, float *out, float *lse, const float *q, const float *kc,
                     const float *vc, int T, int q0, int k0, int k1, int H, int Hkv, int hd,
                     int ldc)
{
    layer_attn_seq_t s = {.out = out, .lse = lse, .q = q, .kc = kc, .vc = vc, .T = T,
                          .q0 = q0, .k0 = k0, .k1 = k1, .ldc = ldc};
    layer_attention_batch(c, &s, 1, H, Hkv, hd, 1.0f / sqrtf((float)hd));
}
