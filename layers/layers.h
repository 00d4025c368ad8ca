/* layers: the math of one device. Every kernel computes in fp32 through
 * OpenBLAS (unless the context says math is skipped) and charges its FLOPs
 * and bytes (in the emulated dtype) to the context's device. Arguments:
 * outputs first, then inputs, then sizes; shapes in the comments, row-major.
 * Weights are in Hugging Face layout: a linear layer's w is (n_out, n_in). */
#ifndef MOEMU_LAYERS_H
#define MOEMU_LAYERS_H

#include <stdint.h>

#include "emu/emu.h"
#include "parallel/par.h"

typedef struct {
    emu_dev_t *dev;    /* charged for every kernel; never NULL */
    emu_dtype_t dtype; /* emulated storage of weights, activations, cache */
    bool math;         /* false: charge only, touch no tensor (dry run) */
    double wsize;      /* bytes a stored weight takes when they differ from
                          dtype's (FP8 with its block scales); 0: dtype's */
    bool dispatch_fp8; /* the MoE dispatch's rows counted in FP8 with their
                          1 x 128 scales (DeepSeek-V3's); values unchanged */
    double ewsize;     /* bytes a stored routed-expert weight takes when they
                          differ from wsize's (MXFP4); 0: wsize's */
    bool fp8_gemm;     /* products with FP8-stored weights (wsize set) run in
                          FP8: layer_fp8 */
    double kvsize;     /* bytes of a cached key or value element when they
                          differ from dtype's (an FP8 KV cache: 1); 0: dtype's */
} layer_ctx_t;

/* Bytes of one cached key or value element. */
static inline double layer_kvsize(const layer_ctx_t *c)
{
    return c->kvsize > 0 ? c->kvsize : (double)emu_dtype_size(c->dtype);
}

/* Bytes of an FP8 activation with its share of the 4-byte scale of its
 * 1 x 128 group (DeepSeek-V3's and DeepGEMM's activation quantization). */
#define LAYER_FP8_ACT (1.0 + 4.0 / 128)

/* Whether a product with c's FP8 weights (ewsize: the routed experts', of
 * MXFP4 or FP8) runs in FP8: its input quantized per 1 x 128 group
 * (layer_fp8_quant), read as LAYER_FP8_ACT bytes, at the card's FP8 peak
 * (emu_charge_gemm_fp8); the math stays fp32 on the host. */
static inline bool layer_fp8(const layer_ctx_t *c, bool experts)
{
    return c->fp8_gemm && c->wsize > 0 && !(experts && c->ewsize > 0);
}

/* The quantization of n activations to FP8 for such a product: a pass that
 * reads them in the dtype and writes e4m3 with the groups' scales
 * (vLLM's per_token_group_quant_fp8), charged as kind. */
void layer_fp8_quant(layer_ctx_t *c, emu_kernel_t kind, double n);

/* Bytes of one stored weight element. */
static inline double layer_wsize(const layer_ctx_t *c)
{
    return c->wsize > 0 ? c->wsize : (double)emu_dtype_size(c->dtype);
}

/* Bytes of one stored routed-expert weight element. */
static inline double layer_ewsize(const layer_ctx_t *c)
{
    return c->ewsize > 0 ? c->ewsize : layer_wsize(c);
}

/* The experts' function: SwiGLU act(x w1^T) * (x w3^T), GELU with two
 * matrices, or gpt-oss's clamped SwiGLU over its own layout (w1 (d, 2F)
 * with gate and up in the even and odd columns, w2 (F, d), biases):
 * g = min(gate, limit), u = clamp(up, -limit, limit),
 * (u + 1) * g * sigmoid(1.702 g). */
typedef enum { LAYER_ACT_SILU = 0, LAYER_ACT_GELU, LAYER_ACT_SWIGLU_OAI } layer_act_t;
#define LAYER_OAI_ALPHA 1.702f

/* ---- Weights held packed on the host (engine/models/weights.c): the
 * matrices of an fp16 or bf16 model keep fp32 addresses [lo, hi), which
 * nothing maps, and their values lie at the same index in packed, as dt's
 * 16 bits. The layers widen what they read (exactly): a product's weight
 * operand whole (so that OpenBLAS sees the call it would see in fp32),
 * into one of a buffer per host core, each of the largest matrix's
 * floats, which layer_packed_add allocates (MOEMU_ERR_NOMEM, naming
 * them); the last region removed frees them. */
moemu_status_t layer_packed_add(const float *lo, const float *hi, const uint16_t *packed,
                                emu_dtype_t dt, int64_t largest);
void layer_packed_remove(const float *lo);
/* How many buffers layer_packed_add allocates: the host's cores. */
int layer_packed_buffers(void);
/* out[0..n) = the n weights at w, widened, when w is packed (true); false,
 * and nothing written, when it is not. */
bool layer_weights_read(float *out, const float *w, int64_t n);

/* The work of each kernel, for callers that account without computing. */
typedef struct {
    double flops, bytes;
} layer_work_t;

layer_work_t layer_linear_work(int T, int n_in, int n_out, emu_dtype_t dt);

/* Host bytes a BLAS caller's buffer keeps resident once it has multiplied
 * up to rows rows at once (emu_need_devices; the buffer's size caps it). */
double layer_blas_resident(int rows);

/* out (T, n_out) = in (T, n_in) @ w^T, w (n_out, n_in) with row stride ldw
 * (ldw >= n_in; a column slice of a wider matrix has ldw > n_in). With
 * accumulate, out += instead of =. */
void layer_linear(layer_ctx_t *c, emu_kernel_t kind, float *out,
                  const float *in, const float *w, int T, int n_in, int n_out,
                  int ldw, bool accumulate);
/* Its two halves: the kernel's charge (an FP8 product's quantization
 * too), and the math alone (for products one fused kernel charges). */
void layer_linear_charge(layer_ctx_t *c, emu_kernel_t kind, int T, int n_in, int n_out,
                         bool accumulate);
void layer_linear_math(const layer_ctx_t *c, float *out, const float *in, const float *w, int T,
                       int n_in, int n_out, int ldw, bool accumulate);
/* Whether the device's stack launches q, k, v as one product and gate,
 * up as one (emu_kernels_mode_t). The math stays a product per matrix:
 * the same bits either way. */
bool layer_fused(const layer_ctx_t *c);

/* nb products out_i (T, n) = in_i (T, m) @ w_i, w_i (m, n) or, with
 * w_trans, (n, m) used as its transpose; each with its row stride (a slice
 * of wider rows), problem i at offsets i * (so, si, sw) from the first:
 * one batched GEMM launch, as MLA's absorbed projections over heads are. */
typedef struct {
    float *out;
    const float *in, *w;
    int ldo, ldi, ldw;
    size_t so, si, sw;
} layer_gemm_t;
void layer_gemm(layer_ctx_t *c, const layer_gemm_t *g, int nb, int T, int m, int n, bool w_trans);

/* out (T, d) = rows of emb (V, d) for tok (T). Ids must be in [0, V). */
void layer_embed(layer_ctx_t *c, float *out, const int *tok, const float *emb,
                 int T, int d);

/* The residual stream's update x (n) += a y at a block's end (a == 1:
 * layer_add's bits, else layer_axpy's): a kernel of its own, or with
 * fused kernels (layer_fused) part of the next block's norm, as vLLM's
 * fused_add_rms_norm, until then counted in *pending. */
void layer_residual(layer_ctx_t *c, float *x, const float *y, int64_t n, float a,
                    int64_t *pending);
/* The pending update as a kernel of its own (none pending: nothing). */
void layer_residual_flush(layer_ctx_t *c, int64_t *pending);
/* layer_rmsnorm whose kernel also makes the pending update (one launch
 * reading and writing both); *pending becomes 0. */
void layer_rmsnorm_pending(layer_ctx_t *c, float *out, const float *in, const float *w, int T,
                           int d, float eps, int64_t *pending);
/* out (T, d) = in / sqrt(mean(in^2) + eps) * w (d). out may equal in. */
void layer_rmsnorm(layer_ctx_t *c, float *out, const float *in, const float *w,
                   int T, int d, float eps);

/* Rotary embedding as Hugging Face transformers computes it
 * (modeling_rope_utils.py and the rotary embedding's forward). */
typedef struct {
    double theta;            /* base */
    int dim;                 /* rotated dims of each head, even; 0: all hd */
    bool interleave;         /* pairs (2i, 2i+1) instead of (i, i + dim/2) */
    double yarn_factor;      /* 0: plain RoPE; else YaRN with this factor */
    double yarn_original_max;  /* original_max_position_embeddings */
    double beta_fast, beta_slow;
    bool truncate;           /* correction range floored/ceiled */
    double attention_factor; /* cos and sin multiplied by it; 0 means 1 */
} layer_rope_t;

/* Fills r's YaRN fields as transformers' _compute_yarn_parameters does,
 * with factor as given (never recomputed from max_position_embeddings):
 * beta_fast, beta_slow 0 mean 32, 1; attention_factor 0 means computed,
 * mscale(f, m) = f <= 1 ? 1 : 0.1 m ln f + 1, as mscale(factor, mscale) /
 * mscale(factor, mscale_all_dim) when both are non-zero, else
 * mscale(factor, 1). theta, dim and interleave are left as they are. */
void layer_rope_yarn(layer_rope_t *r, double factor, double original_max,
                     double beta_fast, double beta_slow, double mscale,
                     double mscale_all_dim, bool truncate,
                     double attention_factor);

/* inv (rd/2) = the inverse frequencies layer_rope uses for head dim hd, rd
 * = r->dim or hd. Plain: theta^(-2i/rd) in double. YaRN: transformers'
 * fp32 steps, pos_freqs = fp32(theta^fp32(2i/rd)), extrapolation 1/pos_freqs,
 * interpolation 1/(factor pos_freqs), blended by 1 - ramp with ramp the
 * fp32 clamp((i - low) / (high - low), 0, 1) over the correction range. */
void layer_rope_freqs(const layer_rope_t *r, int hd, double *inv);

/* Rotary embedding in place: x (T, nh, hd), the token t at absolute position
 * pos[t]; the first rd = r->dim (or hd) dims of each head are rotated, the
 * rest left alone. Angles pos * inv[i] (layer_rope_freqs) are computed in
 * double and rounded to fp32 (for YaRN's fp32 inv and pos < 2^24, torch's
 * fp32 product exactly); cos and sin of that fp32 angle are computed in
 * double and rounded, then multiplied in fp32 by the attention factor.
 * Pair i is (i, i + rd/2) ("rotate half"), or with interleave (2i, 2i+1)
 * rotated in place: DeepSeek's apply_rotary_pos_emb_interleave moves the
 * pairs to halves first, a permutation shared by q and k, so q.k is the
 * same. rd must be even and <= hd. */
/* layer_rope of nq heads of q and nk of k: one kernel with fused kernels
 * (vLLM's rotary_embedding takes both), else one each. */
void layer_rope_qk(layer_ctx_t *c, float *q, int nq, float *k, int nk, const int *pos, int T,
                   int hd, const layer_rope_t *r);
void layer_rope(layer_ctx_t *c, float *x, const int *pos, int T, int nh, int hd,
                const layer_rope_t *r);

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
/* One sequence of a batched call: the arguments of layer_attention, and
 * a sliding window: with window W > 0 a key at position p is visible to
 * a query at qp only when qp - W < p <= qp (gpt-oss's sliding layers). */
typedef struct {
    float *out, *lse;
    const float *q, *kc, *vc;
    int T, q0, k0, k1, ldc;
    int window;       /* 0: every earlier key */
    const int *kpos;  /* if not NULL, the positions of rows k0..k1-1 (any
                         order; rows 0.. of kc): visibility by them */
} layer_attn_seq_t;

/* Several sequences as one kernel, as a varlen flash-attention kernel
 * serves a batch: one launch, the sum of the sequences' work. Scores are
 * q k^T times scale (layer_attention: 1 / sqrt(hd)). */
void layer_attention_batch(layer_ctx_t *c, const layer_attn_seq_t *s, int n,
                           int H, int Hkv, int hd, float scale);
/* The same with values of vd columns (keys and queries of hd): MLA's
 * decompressed prefill, 192-wide keys and 128-wide values a head. out and
 * the value rows (ldc a kv head) are vd wide. */
void layer_attention_batch_v(layer_ctx_t *c, const layer_attn_seq_t *s, int n, int H, int Hkv,
                             int hd, int vd, float scale);
/* Number of (query, key) pairs visible in the call above; with a window
 * W > 0, those within it. */
int64_t layer_attention_pairs(int T, int q0, int k0, int k1);
int64_t layer_attention_pairs_window(int T, int q0, int k0, int k1, int W);
/* Attention sinks (gpt-oss): one learned logit per head joins each
 * softmax row and its share is dropped, so out (T, H, vd), normalised
 * over the keys with their log-sum-exp lse (T, H), becomes
 * out / (1 + exp(sink_h - lse)). Applied once, after any merge of
 * partial results. */
void layer_attention_sinks(layer_ctx_t *c, float *out, const float *lse, const float *sinks,
                           int T, int H, int vd);

/* x (T, d) += y (T, d). */
void layer_add(layer_ctx_t *c, float *x, const float *y, int64_t n);
/* x (n) += a * y (n): a residual add whose branch is scaled (Granite's
 * residual_multiplier). a == 1 is layer_add, bit for bit. */
void layer_axpy(layer_ctx_t *c, float *x, const float *y, int64_t n, float a);
/* x (n) *= a. */
void layer_scale(layer_ctx_t *c, float *x, int64_t n, float a);
/* Each row of x (T, n) += b (n): a linear layer's bias. */
void layer_bias(layer_ctx_t *c, float *x, const float *b, int T, int n);
/* x (n) clamped to [-lim, lim] (OLMoE's clip_qkv). */
void layer_clamp(layer_ctx_t *c, float *x, int64_t n, float lim);

/* How a router turns logits into k weights (ties to the lower index):
 * softmax over all E, then the top k, renormalised to sum to 1 (Mixtral,
 * norm_topk_prob) or not (Qwen2-MoE and OLMoE without it); or the top k
 * of the logits, then a softmax over those k (GraniteMoE). */
typedef enum {
    LAYER_ROUTE_SOFTMAX_TOPK_NORM = 0,
    LAYER_ROUTE_SOFTMAX_TOPK,
    LAYER_ROUTE_TOPK_SOFTMAX,
    LAYER_ROUTE_GROUPED, /* DeepSeek's, as layer_gate_t says */
} layer_route_t;

/* DeepSeek's router (modeling_deepseek_v2.py, _v3.py; inference/model.py's
 * Gate): scores are the softmax or the sigmoid of the logits; experts are
 * chosen on score + bias (V3's e_score_correction_bias) within the
 * topk_group best of n_group groups (a group scores its best choice
 * score, or the sum of its best two), the others excluded as -inf; the
 * weights are the chosen experts' unbiased scores, renormalised when norm
 * (the sum plus 1e-20, as V3 does), times scale. */
typedef struct {
    const float *bias; /* (E), or NULL */
    bool sigmoid, norm, group_top2;
    int n_group, topk_group; /* 1, 1: no groups */
    float scale;             /* routed_scaling_factor */
    const float *logit_bias; /* (E) added to the logits before any router
                                (gpt-oss's router bias), or NULL */
} layer_gate_t;

/* Router: logits (T, E) = x (T, d) @ wg^T (wg (E, d)), then the k choices
 * as how says (with LAYER_ROUTE_GROUPED, as g says; g is NULL otherwise).
 * idx (T, k) and w (T, k) are ordered by choice score descending, ties to
 * the lower index. logits is scratch. */
void layer_router(layer_ctx_t *c, int *idx, float *w, float *logits,
                  const float *x, const float *wg, int T, int d, int E, int k,
                  layer_route_t how, const layer_gate_t *g);

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

/* One expert's rows in a grouped call. With LAYER_ACT_SWIGLU_OAI, w1 is
 * the expert's (d, 2F) slice of gate/up columns (row stride 2 ldw2), w2
 * its (F, d) rows, b13 the slice's 2F interleaved biases and b2 the
 * output's d biases (NULL on all but one ETP slice: added once). */
typedef struct {
    float *out;
    const float *x, *w1, *w3, *w2;
    const float *b13, *b2;
    int n;
} layer_expert_job_t;

/* Several experts as grouped kernels, as a grouped GEMM serves an MoE
 * layer: one launch per weight matrix and one for the activation, the sum
 * of the experts' work (each expert's weights read once). Jobs of no rows
 * cost nothing. h is scratch of 2 * max(n) * F floats; sizes as in
 * layer_expert. */
void layer_expert_group(layer_ctx_t *c, const layer_expert_job_t *jobs,
                        int njobs, float *h, int d, int F, int ldw2,
                        layer_act_t act, float limit, bool accumulate);

/* Greedy pick: the index of the highest of logits (n); ties to the lowest
 * index; NaN never wins. */
int layer_argmax(const float *logits, int n);

/* ---- Sharded forms (layers/shard.c): a device's part of a layer under
 * tensor (TP, SP), context (CP) and expert (EP, ETP) parallelism. A group
 * of one has a NULL communicator: every helper below then works locally. */
typedef struct {
    par_comm_t *tp, *cp, *ep, *etp, *replica; /* replica: the CP x TP devices
                                                 of one DP replica, one stage */
    int tp_size, tp_rank, cp_size, cp_rank;
    int ep_size, ep_rank, etp_size, etp_rank, replica_size, replica_rank;
    bool sp;
    /* par_moe_replicated: every TP rank routes all the rows, computes its
     * experts' slice of them and the TP group all-reduces the outputs */
    bool moe_replicated;
} layer_shard_t;

/* Rows of width floats from every member, in rank order: member q gives
 * counts[q] rows, out receives sum(counts) rows. Uneven counts are padded to
 * the largest on the wire (as a real implementation pads). */
moemu_status_t layer_gather_rows(layer_ctx_t *c, float *out, const float *in,
                                 const int *counts, int width, par_comm_t *comm);
/* The sum over members of in (sum(counts) rows, member q's slice at its
 * offset), of which this member keeps its own counts[me] rows in out. */
moemu_status_t layer_reduce_scatter_rows(layer_ctx_t *c, float *out,
                                         const float *in, const int *counts,
                                         int width, par_comm_t *comm);
/* buf (n) summed over the members, in place. */
moemu_status_t layer_allreduce(layer_ctx_t *c, float *buf, int64_t n,
                               par_comm_t *comm);

/* Merge attention over disjoint key ranges: parts (n, T, H, hd) with their
 * lse (n, T, H) from layer_attention, combined in part order into
 * out (T, H, hd), and the whole's lse into lse_out (T, H) if not NULL. */
void layer_attention_merge(layer_ctx_t *c, float *out, float *lse_out, const float *parts,
                           const float *lse, int n, int T, int H, int hd);

/* Capacity of one routing group spread over the members of comm: member q
 * routed counts[q] tokens whose places in group order are gpos (all
 * members' lists, concatenated in rank order, T in all). Every member
 * gathers the decisions and applies layer_apply_capacity to the whole
 * group; keep (n, k) receives this member's flags. Returns the drops among
 * this member's tokens in *dropped. */
moemu_status_t layer_capacity_group(layer_ctx_t *c, uint8_t *keep,
                                    int64_t *dropped, const int *idx, int n,
                                    const int *counts, const int *gpos, int T,
                                    int k, int E, double cf, par_comm_t *comm);

/* A device's collectives: virtual seconds in them (waiting for the peers
 * included), and calls and bytes sent per kind (emu_comm_stats_t's,
 * summed over link classes). */
typedef struct {
    double time;
    double calls[EMU_COLL__COUNT], bytes[EMU_COLL__COUNT];
} layer_xfer_t;

/* The device's totals so far: snapshots whose differences are what a
 * stretch of work issued. */
void layer_xfer_now(layer_xfer_t *x, const emu_dev_t *dev);
/* acc += t1 - t0, two snapshots; layer_xfer_since: from t0 to now. */
void layer_xfer_add(layer_xfer_t *acc, const layer_xfer_t *t0, const layer_xfer_t *t1);
void layer_xfer_since(layer_xfer_t *acc, const layer_xfer_t *t0, const emu_dev_t *dev);

/* Experts as one device holds them: the full matrices of all E (host,
 * Hugging Face layout), of which it computes experts [e0, e1) on the
 * intermediate slice [f0, f1). w3 is NULL with GELU. */
typedef struct {
    float *const *w1, *const *w3, *const *w2;
    float *const *b13, *const *b2; /* LAYER_ACT_SWIGLU_OAI's biases, E each:
                                      (2F) interleaved, (d); or NULL */
    int E, k, d, F, e0, e1, f0, f1;
    layer_act_t act;
    float limit;   /* LAYER_ACT_SWIGLU_OAI's clamp */
    int64_t *load; /* (E), if not NULL: += the rows each expert computed
                      here (counted on ETP rank 0) */
    layer_xfer_t *xfer; /* (2), if not NULL: += what this device spent
                           and issued in the dispatch and in the combine */
} layer_experts_t;

/* Work for the compute stream while the routed rows are in flight (an
 * engine's overlap, emu.h "Streams"): fn while they travel to the
 * experts, back (may be NULL) while the outputs travel back; their status
 * is the call's. */
typedef struct {
    moemu_status_t (*fn)(void *arg);
    moemu_status_t (*back)(void *arg);
    void *arg;
} layer_beside_t;

/* The dispatcher the routed experts of s go by on c's device in a
 * prefill or a decode pass: its stack's (emu_dispatcher_t; deepep-auto
 * resolved to the normal or the low-latency mode) over an EP group
 * without ETP; otherwise (ETP > 1, no EP group, tokens replicated over
 * TP) all-to-all. */
emu_dispatcher_t layer_moe_dispatcher(const layer_ctx_t *c, const layer_shard_t *s,
                                      bool decode);
/* Whether their rows travel to other ranks while layer_moe_routed's beside
 * runs (an all-to-all or DeepEP dispatch over EP or ETP groups): what an
 * overlap can hide. Otherwise beside runs before the routed experts. */
bool layer_moe_in_flight(const layer_ctx_t *c, const layer_shard_t *s, bool decode);

/* The routed experts of n rows x (n, d) with choices idx, w, keep (n, k):
 * each kept choice travels over the EP group to the rank holding its
 * expert (counts first, then rows, with all-to-all), is gathered over the
 * ETP group, computed on each member's intermediate slice, reduced back,
 * and returned; routed (n, d) = sum over kept choices, in choice order, of
 * w * expert(x); decode: the pass is a decode step (the dispatcher's
 * choice, above). beside (may be NULL) runs once: while the rows travel,
 * where they do (they go asynchronously then, and the compute stream
 * waits for them after it), otherwise first; its back, where the rows
 * travel, while the outputs travel back. */
moemu_status_t layer_moe_routed(layer_ctx_t *c, const layer_shard_t *s, bool decode,
                                float *routed, const float *x, const int *idx,
                                const float *w, const uint8_t *keep, int n,
                                const layer_experts_t *ex, const layer_beside_t *beside);

/* ---- Sharded blocks (layers/blocks.c): one rank's part of a layer in one
 * pass, called by the runner through a family's layer. Every collective
 * of a block runs over the rank's groups in layer_shard_t, so that the
 * same code serves one device and many. */

/* The rows of a pass as one rank sees them (docs/strategies.md):
 * A = [0, n): the tokens its attention sees; R = [r0, r1): the residual
 * rows it holds (all of A, or with SP its TP slice); M = [m0, m1): the
 * tokens it routes, inside R, so that a replica routes each token once. */
typedef struct {
    bool decode;
    int n, r0, r1, m0, m1;
    const int *seq, *pos;     /* (n) sequence and position of each A row */
    const int *seq_len;       /* prompt length of every sequence */
    /* CP prefill: the A rows of every CP rank in rank order, cp_n[c] each,
     * with the same TP rank */
    const int *cp_seq, *cp_pos, *cp_n;
    /* capacity (cf > 0): the routing group's group_T tokens; the M rows of
     * the replica's members (group_n[member], replica order) and their
     * places in group order, concatenated */
    int group_T;
    const int *group_n, *group_pos;
} layer_rows_t;

/* One layer's KV cache on one rank: sequence b >= b0 keeps keys then
 * values, each (kv heads, cap[b - b0], hd), at base + off[b - b0], of which
 * n[b - b0] positions are filled. */
typedef struct {
    float *base;
    const int64_t *off;
    const int *cap;
    int *n;
    int b0;
    int *pos; /* if not NULL, the position of every cached row, at the row
                 index of the keys (off / (parts * kv width)): CP's cache
                 holds positions out of order, which a window needs */
} layer_kv_t;

/* What one rank holds of the model's sizes. */
typedef struct {
    int d, hd;               /* hidden size, head dim */
    int H, head0, Hl;        /* query heads: all, the rank's first, count */
    int Hkv, kv_head0, kvl;  /* key/value heads: all, the rank's first, count */
    int V, vocab0, Vl;       /* vocabulary; the rank's rows of the padded
                                vocabulary, [vocab0, vocab0 + Vl) */
    int E, k;                /* experts, choices per token */
    int mlp_f;               /* widest MLP slice the rank computes (0: none) */
    int row_f;               /* per-row figures a block keeps (norms' sums,
                                gates): 2 or 0 */
    bool kv_shared;          /* the values are the keys' rows (MLA's latent):
                                the cache holds them once */
    int q_lora, lora, nope, rope_d, vd; /* MLA: the query and key/value ranks,
                                each head's parts (0: not MLA) */
    int mla_f;               /* MLA's per-row scratch floats */
    float eps;               /* RMSNorm */
    layer_rope_t rope;
    float attn_scale;        /* of q k^T: 1 / sqrt(hd), or Granite's */
    float embed_mult;        /* embedding lookup times this (Granite) */
    float resid_mult;        /* each branch times this before its add */
    float logit_div;         /* logits divided by this (Granite) */
} layer_dims_t;

/* A rank's working state for a pass: scratch sized for its largest pass
 * (Tmax rows, Ttot keys of a micro-batch; layer_view_scratch gives the
 * sizes), the residual rows xr and the KV cache of the current layer. */
typedef struct {
    layer_ctx_t *x;
    const layer_shard_t *sh;
    const layer_dims_t *dm;
    const layer_rows_t *r;
    layer_kv_t kv;
    float *xr, *na, *q, *kk, *vv, *att, *o, *moe, *sh_out, *rlog, *lse, *wts,
        *parts, *kvall, *kfull, *logits, *lgath;
    float *rowf;             /* (row_f Tmax) per-row figures */
    float *mla;              /* (mla_f Tmax) MLA's projections */
    float *mla_kv;           /* (Ttot, Hl (qk + vd)) MLA prefill's keys and
                                values, decompressed from the latent */
    int *idx;                /* (Tmax, k) choices */
    uint8_t *keep;           /* (Tmax, k) */
    layer_attn_seq_t *seqs;  /* (2 * sequences) */
    int Ttot;
    int64_t resid;           /* xr's update pending for the next norm
                                (layer_residual) */
} layer_view_t;

/* The floats and ints of a view's scratch for passes of at most Tmax rows,
 * Ttot keys and nlog rows of logits; layer_view_carve points the buffers
 * into block (those floats, then those ints, then Tmax * k bytes). */
void layer_view_scratch(const layer_dims_t *dm, const layer_shard_t *sh, int Tmax, int Ttot,
                        int nlog, size_t *nf, size_t *ni);
void layer_view_carve(layer_view_t *v, void *block, int Tmax, int Ttot, int nlog);

/* Query/key normalisation: none, RMSNorm over each head's hd (Qwen3-MoE),
 * or over the whole projected width, H*hd and Hkv*hd (OLMoE), which under
 * TP needs each row's sum of squares over the group. */
typedef enum { LAYER_QKNORM_NONE = 0, LAYER_QKNORM_HEAD, LAYER_QKNORM_WIDTH } layer_qknorm_t;

/* Attention weights: norm (d), q (H*hd, d), k and v (Hkv*hd, d), o
 * (d, H*hd), whole; the rank reads its heads. Optional (NULL: none):
 * biases bq (H*hd), bk, bv (Hkv*hd), bo (d); query and key norms qn, kn
 * ((hd) each by head, (H*hd) and (Hkv*hd) by width). clip > 0 clamps q,
 * k and v to [-clip, clip] after the norms. */
typedef struct {
    const float *norm, *wq, *wk, *wv, *wo;
    const float *bq, *bk, *bv, *bo, *qn, *kn;
    layer_qknorm_t qk_norm;
    float clip;
    const float *sinks; /* (H) gpt-oss's sink logits, or NULL */
    int window;         /* a sliding window of keys; 0: none */
} layer_attn_w_t;

/* Pre-norm grouped-query attention with RoPE on R, residual added:
 * TP splits the heads (column-parallel q/k/v, row-parallel o), SP the
 * residual rows, CP the positions (prefill: keys and values gathered;
 * decode: partial results over each rank's part of the cache merged).
 * The pass's keys and values join the cache. */
moemu_status_t layer_attention_block(layer_view_t *v, const layer_attn_w_t *w);

/* Multi-head latent attention (DeepSeek-V2/V3), weights whole: q_proj
 * (H*(nope+rope), d), or q_a_proj (q_lora, d), q_a_layernorm (q_lora) and
 * q_b_proj (H*(nope+rope), q_lora); kv_a_proj_with_mqa (lora+rope, d),
 * kv_a_layernorm (lora), kv_b_proj (H*(nope+vd), lora), o_proj (d, H*vd).
 * eps: the a-layernorms' (1e-6). rope: how the rope parts rotate. */
typedef struct {
    const float *norm, *wq, *q_a, *q_a_norm, *q_b, *kv_a, *kv_a_norm, *kv_b, *wo;
    float eps;
} layer_mla_w_t;

/* MLA on R, residual added, in the weight-absorbed form DeepSeek's
 * inference code, vLLM and SGLang use: the cache keeps each token's
 * latent, [k_pe (rope) | normalised c_kv (lora)], one row shared by all
 * heads as key and value; a head's query is [q_pe | q_nope W_uk] and its
 * output W_uv of the attended latent. TP splits the heads (q_b_proj,
 * kv_b_proj's rows, o_proj's columns); the down-projections and the
 * latent are every rank's. dims: hd = rope + lora, one kv head,
 * kv_shared. */
moemu_status_t layer_mla_block(layer_view_t *v, const layer_mla_w_t *w);

/* TP rank t's rows [v0, v1) of the vocabulary padded for TP to
 * ceil(V/TP)*TP rows (rows >= V are padding). */
void layer_vocab_rows(int V, int tp, int t, int *v0, int *v1);

/* The vocabulary-parallel embedding of tok (n, one per A row) into xr:
 * each TP rank looks up its rows of the table, the sum over the group
 * (reduce-scattered to the SP slices with SP) completes every row. */
moemu_status_t layer_embed_block(layer_view_t *v, const float *table, const int *tok);

/* Final norm and vocabulary-parallel lm_head of the A rows rows (nl):
 * each TP rank computes its padded slice (padding rows never win), the
 * group gathers them. *logits receives (nl, ld) with ld >= V: row i's
 * logit of token j at (*logits)[i * ld + j]. */
moemu_status_t layer_head_block(layer_view_t *v, const float *norm, const float *lm_head,
                                const int *rows, int nl, const float **logits, size_t *ld);

/* Pre-norm router of the MoE block: norm of R into na, then the router's
 * top-k of the M rows into idx and wts (gate (E, d)). */
void layer_moe_route(layer_view_t *v, const float *norm, const float *gate, layer_route_t how,
                     const layer_gate_t *g);
/* Capacity over the routing group (layer_rows_t's group lists) into keep,
 * factor cf (0: dropless); *dropped receives the drops among M. */
moemu_status_t layer_moe_capacity(layer_view_t *v, double cf, int64_t *dropped);

/* S dense MLPs split over TP (Megatron's column- then row-parallel MLP),
 * as the shared experts are: each rank computes its slice [f0, f1) of
 * every MLP's F. */
typedef struct {
    float *const *w1, *const *w3, *const *w2; /* S each, whole: (F, d), (F, d), (d, F) */
    int S, F, f0, f1;
    layer_act_t act;
    const float *gate; /* (d): the sum scaled by sigmoid(gate . x) (Qwen2-MoE), or NULL */
} layer_mlp_t;

/* The MLPs on the normalised rows of A in na (the SP slice gathered over
 * TP first), summed over the TP group (reduce-scattered to the SP slices
 * with SP), gated, and added into out's R rows. */
moemu_status_t layer_mlp_block(layer_view_t *v, const layer_mlp_t *m, float *out);

/* A dense layer's MLP block: pre-norm (norm (d)) of R, the MLP as above,
 * the residual add into xr. */
moemu_status_t layer_dense_block(layer_view_t *v, const float *norm, const layer_mlp_t *m);

/* The rest of the MoE block on the choices in idx, wts, keep: the routed
 * experts over EP/ETP, their outputs back to the residual rows, the shared
 * experts (mlp, may have S = 0) and the residual add into xr. */
moemu_status_t layer_moe_block(layer_view_t *v, const layer_experts_t *ex, const layer_mlp_t *mlp);

#endif
