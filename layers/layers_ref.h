/* layers reference: naive loop versions of the kernels of layers/layers.h,
 * in double precision, written from the semantics in DESIGN.md and the
 * comments of layers.h, not from the fast kernels. They charge no device and
 * call no BLAS; they exist for the tests to compare against (BLIS's
 * reference kernels, llm.c's CPU reference). Inputs are the fast kernels'
 * fp32 tensors; outputs are double unless the result is exact (copies,
 * indices). Arguments: outputs first, then inputs, then sizes; shapes in the
 * comments, row-major. Every output buffer is owned by the caller. */
#ifndef MOEMU_LAYERS_REF_H
#define MOEMU_LAYERS_REF_H

#include <stdbool.h>
#include <stdint.h>

#include "layers/layers.h"

/* out (T, n_out) = in (T, n_in) @ w^T, w (n_out, n_in) with row stride ldw
 * (only columns 0..n_in-1 of each row are read). With accumulate, the
 * product is added to out's current values. */
void ref_linear(double *out, const float *in, const float *w, int T, int n_in,
                int n_out, int ldw, bool accumulate);

/* out (T, d) = rows of emb (V, d) for tok (T). */
void ref_embed(float *out, const int *tok, const float *emb, int T, int d);

/* out (T, d) = in / sqrt(mean(in^2) + eps) * w (d), in double. */
void ref_rmsnorm(double *out, const float *in, const float *w, int T, int d,
                 float eps);

/* Rotary embedding out of place, layer_rope's parameters:
 * out (T, nh, hd) = rope(x (T, nh, hd)) with token t at position pos[t].
 * rd = r->dim or hd; dims rd..hd-1 of each head are copied. For i in
 * [0, rd/2): f = ref_rope_freq(r, hd, i); the angle pos f is computed in
 * double and rounded to fp32; c, s = cos, sin of that fp32 angle in double,
 * rounded to fp32, times fp32(attention_factor or 1) rounded to fp32; then,
 * in double, with (i1, i2) = (2i, 2i+1) if interleave, else (i, i + rd/2),
 *   out[i1] = x[i1] c - x[i2] s
 *   out[i2] = x[i2] c + x[i1] s. */
void ref_rope(double *out, const float *x, const int *pos, int T, int nh,
              int hd, const layer_rope_t *r);

/* Frequency i: plain theta^(-2i/rd) in double; YaRN as transformers'
 * _compute_yarn_parameters with each torch op rounded to fp32. */
double ref_rope_freq(const layer_rope_t *r, int hd, int i);

/* The fp32 angle and its rounded cos/sin used above (exposed for tests). */
void ref_rope_angle(float *ang, float *c, float *s, int pos, int i, int hd,
                    double theta);

/* Causal grouped-query attention with the full score matrix materialised.
 * q (T, H, hd) at absolute positions q0..q0+T-1; kc, vc (Hkv, ldc, hd) hold
 * positions k0..k1-1 in rows 0..k1-k0-1. Query head h reads kv head
 * h / (H / Hkv). Key p is visible to query qp when p <= qp.
 * score = q.k / sqrt(hd); out (T, H, hd) = softmax over visible keys of
 * score, times v; lse (T, H), if not NULL, = log(sum over visible keys of
 * exp(score)). A query with no visible key gets out = 0, lse = -INFINITY. */
void ref_attention(double *out, double *lse, const float *q, const float *kc,
                   const float *vc, int T, int q0, int k0, int k1, int H,
                   int Hkv, int hd, int ldc);

/* Number of visible (query, key) pairs of the call above; with a sliding
 * window W > 0, a query at qp sees only keys past qp - W. */
int64_t ref_attention_pairs(int T, int q0, int k0, int k1, int W);

/* x (n) += y (n) in double: out (n) = x + y. */
void ref_add(double *out, const float *x, const float *y, int64_t n);

/* Router: logits = x (T, d) @ wg^T (wg (E, d)), p (T, E) = softmax(logits)
 * in double; the top k of p, ties to the lower index; w renormalised to sum
 * to 1 unless how is LAYER_ROUTE_SOFTMAX_TOPK (a softmax over the top k
 * logits, LAYER_ROUTE_TOPK_SOFTMAX, is the renormalised p in exact
 * arithmetic). idx (T, k) and w (T, k) are ordered by p descending (equal
 * p: lower index first). p, if not NULL, receives the probabilities. */
void ref_router(int *idx, double *w, double *p, const float *x,
                const float *wg, int T, int d, int E, int k, layer_route_t how);

/* ceil(cf * T * k / E) in exact integer arithmetic, with cf taken as the
 * rational round(cf * 1e9) / 1e9. cf == 0: INT64_MAX (dropless). */
int64_t ref_capacity(double cf, int64_t T, int k, int E);

/* Group order: token by token, each token's k choices in order; an expert
 * keeps its first cap assignments. keep (T, k), count (E) (may be NULL).
 * Returns the number dropped. */
int64_t ref_apply_capacity(uint8_t *keep, int64_t *count, const int *idx,
                           int T, int k, int E, int64_t cap);

/* One expert on n rows, in double: out (n, d) = W2 (silu(W1 x) * (W3 x))
 * for SwiGLU, W2 gelu_erf(W1 x) for GELU (w3 ignored). x (n, d); w1, w3
 * (F, d) with row stride d; w2 (d, F) with row stride ldw2. With accumulate,
 * added to out's current values. */
void ref_expert(double *out, const float *x, const float *w1, const float *w3,
                const float *w2, int n, int d, int F, int ldw2,
                layer_act_t act, bool accumulate);

/* Index of the largest of logits (n): ties to the lowest index, NaN never
 * wins. All NaN: 0. */
int ref_argmax(const float *logits, int n);

#endif
