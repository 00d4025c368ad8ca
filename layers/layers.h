/* layers: the math of one device. Every kernel computes in fp32 through
 * OpenBLAS (unless the context says math is skipped) and charges its FLOPs
 * and bytes (in the emulated dtype) to the context's device. Arguments:
 * outputs first, then inputs, then sizes; shapes in the comments, row-major.
 * Weights are in Hugging Face layout: a linear layer's w is (n_out, n_in). */
#ifndef MOEMU_LAYERS_H
#define MOEMU_LAYERS_H

#include <stdint.h>

#include "emu/emu.h"

typedef struct {
    emu_dev_t *dev;    /* charged for every kernel; never NULL */
    emu_dtype_t dtype; /* emulated storage of weights, activations, cache */
    bool math;         /* false: charge only, touch no tensor (dry run) */
} layer_ctx_t;

typedef enum { LAYER_ACT_SILU = 0, LAYER_ACT_GELU } layer_act_t;

/* The work of each kernel, for callers that account without computing. */
typedef struct {
    double flops, bytes;
} layer_work_t;

layer_work_t layer_linear_work(int T, int n_in, int n_out, emu_dtype_t dt);

/* out (T, n_out) = in (T, n_in) @ w^T, w (n_out, n_in) with row stride ldw
 * (ldw >= n_in; a column slice of a wider matrix has ldw > n_in). With
 * accumulate, out += instead of =. */
void layer_linear(layer_ctx_t *c, emu_kernel_t kind, float *out,
                  const float *in, const float *w, int T, int n_in, int n_out,
                  int ldw, bool accumulate);

/* out (T, d) = rows of emb (V, d) for tok (T). Ids must be in [0, V). */
void layer_embed(layer_ctx_t *c, float *out, const int *tok, const float *emb,
                 int T, int d);

/* out (T, d) = in / sqrt(mean(in^2) + eps) * w (d). out may equal in. */
void layer_rmsnorm(layer_ctx_t *c, float *out, const float *in, const float *w,
                   int T, int d, float eps);

/* Rotary embedding in place, "rotate half" convention: x (T, nh, hd), the
 * token t at absolute position pos[t]. Angles pos * theta^(-2i/hd) are
 * computed in double and rounded to fp32; cos and sin of that fp32 angle
 * are computed in double and rounded. hd must be even. */
void layer_rope(layer_ctx_t *c, float *x, const int *pos, int T, int nh, int hd,
                double theta);

/* Causal grouped-query attention, blockwise with an online softmax (no
 * T x T buffer). Queries q (T, H, hd) sit at absolute positions q0..q0+T-1;
 * keys and values kc, vc (Hkv, ldc, hd) hold absolute positions k0..k1-1 in
 * their rows 0..k1-k0-1. Query head h reads kv head h / (H / Hkv); a key at
 * position p is visible to a query at position qp when p <= qp.
 * out (T, H, hd) is normalised over the visible keys of this range; lse
 * (T, H), if not NULL, receives the natural log of the sum of
 * exp(score) over them (-INFINITY and out = 0 where none is visible), so
 * that partial results over disjoint key ranges can be merged. */
void layer_attention(layer_ctx_t *c, float *out, float *lse, const float *q,
                     const float *kc, const float *vc, int T, int q0, int k0,
                     int k1, int H, int Hkv, int hd, int ldc);
/* Number of (query, key) pairs visible in the call above. */
int64_t layer_attention_pairs(int T, int q0, int k0, int k1);

/* x (T, d) += y (T, d). */
void layer_add(layer_ctx_t *c, float *x, const float *y, int64_t n);

/* Router: logits (T, E) = x (T, d) @ wg^T (wg (E, d)), p = softmax(logits),
 * the top k of p (ties to the lower index), renormalised to sum to 1.
 * idx (T, k) and w (T, k) are ordered by p descending. logits is scratch. */
void layer_router(layer_ctx_t *c, int *idx, float *w, float *logits,
                  const float *x, const float *wg, int T, int d, int E, int k);

/* Per-expert capacity of a routing group of T real tokens:
 * ceil(cf * T * k / E) in decimal arithmetic (cf is taken to 9 decimals),
 * so a whole number is not rounded up. cf == 0 means dropless: INT64_MAX. */
int64_t layer_capacity(double cf, int64_t T, int k, int E);

/* Apply capacity to a routing group whose assignments idx (T, k) are in
 * group order (sequence by sequence, then position): keep (T, k) is 1 for
 * the first cap assignments each expert receives, 0 for the others.
 * count (E), if not NULL, receives the kept assignments per expert.
 * Returns the number of dropped assignments. */
int64_t layer_apply_capacity(uint8_t *keep, int64_t *count, const int *idx,
                             int T, int k, int E, int64_t cap);

/* One expert on n gathered rows: out (n, d) = W2 (act(W1 x) * W3 x) for
 * SwiGLU, W2 act(W1 x) for GELU (w3 ignored). w1, w3 (F, d) with row stride
 * d; w2 (d, F) with row stride ldw2 (ldw2 > F for a column slice, as in
 * expert-tensor parallelism). h is scratch of 2 * n * F floats. With
 * accumulate, out += instead of =. */
void layer_expert(layer_ctx_t *c, float *out, float *h, const float *x,
                  const float *w1, const float *w3, const float *w2, int n,
                  int d, int F, int ldw2, layer_act_t act, bool accumulate);
layer_work_t layer_expert_work(int n, int d, int F, layer_act_t act,
                               emu_dtype_t dt);

/* Greedy pick: the index of the highest of logits (n); ties to the lowest
 * index; NaN never wins. */
int layer_argmax(const float *logits, int n);

#endif
