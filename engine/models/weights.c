/* Generated and loaded weights: the tensors in one fp32 block, or a
 * generated fp16 or bf16 model's matrices packed in the dtype. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/models/family.h"
#include "engine/models/checkpoint.h"
#include "layers/layers.h"

/* ---- The layout: every tensor in one block, named as the family names
 * it. One walk serves both passes: counting (no block yet) and placing. */

typedef struct {
    wts_t *w;
    const wts_names_t *nm;
    uintptr_t base;  /* where the block begins; 0 when counting */
    uintptr_t pbase; /* where the packed tensors' addresses begin */
    bool pack;       /* the matrices packed (wts_packs) */
    const bool *keep32; /* NULL, or per named tensor: kept in fp32 all the same
                           (a checkpoint stores it otherwise than the dtype) */
    int64_t floats, packed; /* elements placed so far, in each */
    int n;           /* named tensors so far */
    int64_t largest; /* elements of the largest packed tensor */
} walk_t;

/* Each kind's name in wts_names_t. */
static const size_t name_at[WTS_KINDS] = {
    [WTS_EMBED] = offsetof(wts_names_t, embed),
    [WTS_FINAL_NORM] = offsetof(wts_names_t, final_norm),
    [WTS_LM_HEAD] = offsetof(wts_names_t, lm_head),
    [WTS_ATTN_NORM] = offsetof(wts_names_t, attn_norm),
    [WTS_Q] = offsetof(wts_names_t, q), [WTS_K] = offsetof(wts_names_t, k),
    [WTS_V] = offsetof(wts_names_t, v), [WTS_O] = offsetof(wts_names_t, o),
    [WTS_BQ] = offsetof(wts_names_t, bq), [WTS_BK] = offsetof(wts_names_t, bk),
    [WTS_BV] = offsetof(wts_names_t, bv), [WTS_BO] = offsetof(wts_names_t, bo),
    [WTS_QN] = offsetof(wts_names_t, qn), [WTS_KN] = offsetof(wts_names_t, kn),
    [WTS_MLP_NORM] = offsetof(wts_names_t, mlp_norm),
    [WTS_Q_A] = offsetof(wts_names_t, q_a), [WTS_Q_A_NORM] = offsetof(wts_names_t, q_a_norm),
    [WTS_Q_B] = offsetof(wts_names_t, q_b), [WTS_KV_A] = offsetof(wts_names_t, kv_a),
    [WTS_KV_A_NORM] = offsetof(wts_names_t, kv_a_norm),
    [WTS_KV_B] = offsetof(wts_names_t, kv_b),
    [WTS_ROUTER] = offsetof(wts_names_t, router),
    [WTS_GATE_BIAS] = offsetof(wts_names_t, gate_bias),
    [WTS_E1] = offsetof(wts_names_t, e1), [WTS_E2] = offsetof(wts_names_t, e2),
    [WTS_E3] = offsetof(wts_names_t, e3),
    [WTS_FUSED_IN] = offsetof(wts_names_t, fused_in),
    [WTS_FUSED_OUT] = offsetof(wts_names_t, fused_out),
    [WTS_S1] = offsetof(wts_names_t, s1), [WTS_S2] = offsetof(wts_names_t, s2),
    [WTS_S3] = offsetof(wts_names_t, s3), [WTS_SGATE] = offsetof(wts_names_t, sgate),
    [WTS_SINKS] = offsetof(wts_names_t, sinks),
    [WTS_ROUTER_BIAS] = offsetof(wts_names_t, router_bias),
    [WTS_GATE_UP] = offsetof(wts_names_t, gate_up),
    [WTS_GATE_UP_BIAS] = offsetof(wts_names_t, gate_up_bias),
    [WTS_DOWN] = offsetof(wts_names_t, down),
    [WTS_DOWN_BIAS] = offsetof(wts_names_t, down_bias),
    [WTS_D1] = offsetof(wts_names_t, d1), [WTS_D2] = offsetof(wts_names_t, d2),
    [WTS_D3] = offsetof(wts_names_t, d3),
};

/* The family's name of a kind of tensor, NULL if it has none. */
static const char *name_of(const wts_names_t *nm, wts_kind_t kind)
{
    return *(const char *const *)((const char *)nm + name_at[kind]);
}

/* Tensors an FP8 checkpoint keeps in the dtype, besides the vectors. */
static bool kept_in_dtype(wts_kind_t kind)
{
    return kind == WTS_EMBED || kind == WTS_LM_HEAD || kind == WTS_ROUTER || kind == WTS_SGATE ||
           kind == WTS_GATE_UP_BIAS || kind == WTS_DOWN_BIAS;
}

/* The matrices, packed in a model that packs: what the layers read
 * through products and the embedding's rows (layer_packed_add), not the
 * vectors and gpt-oss's expert biases, which they read as they lie; nor
 * lm_head (or the embedding tied to it): every decode step reads all of
 * it, larger than the caches, and widening it each time would double
 * that step's memory traffic, for a few percent of a model's weights. */
static bool packed_kind(const cfg_model_t *c, wts_kind_t kind, int ndim)
{
    if (kind == WTS_LM_HEAD || (kind == WTS_EMBED && c->tie_word_embeddings)) return false;
    return ndim >= 2 && kind != WTS_GATE_UP_BIAS && kind != WTS_DOWN_BIAS;
}

/* The next tensor of ndim dimensions (shape a, b, c), of the kind given,
 * named with the layer l and expert j: its place in the block, or its
 * address among the packed ones (NULL when counting). */
static float *take(walk_t *k, wts_kind_t kind, int l, int j, int ndim, int64_t a, int64_t b,
                   int64_t c)
{
    const char *fmt = name_of(k->nm, kind);
    int64_t n = a * (ndim > 1 ? b : 1) * (ndim > 2 ? c : 1);
    bool packed = k->pack && packed_kind(&k->w->cfg, kind, ndim) &&
                  !(fmt && k->keep32 && k->keep32[k->n]);
    int64_t *at = packed ? &k->packed : &k->floats;
    uintptr_t base = packed ? k->pbase : k->base;
    float *p = k->base ? (float *)(base + sizeof(float) * (uintptr_t)*at) : NULL;
    if (p && fmt) {
        wts_tensor_t *t = &k->w->list[k->n];
        bool top = kind == WTS_EMBED || kind == WTS_FINAL_NORM || kind == WTS_LM_HEAD;
        *t = (wts_tensor_t){.ndim = ndim, .shape = {a, b, c}, .data = p,
                            .fan_in = ndim == 1 ? a : ndim == 2 ? b : c,
                            .fp8 = k->w->cfg.fp8_block_r > 0 && ndim >= 2 && !kept_in_dtype(kind),
                            .packed = packed, .kind = kind, .layer = top ? -1 : l, .expert = j};
        snprintf(t->name, sizeof t->name, fmt, l, j);
    }
    if (packed && n > k->largest) k->largest = n;
    *at += n;
    k->n += fmt != NULL;
    return p;
}

/* The last tensor taken reads rows of fan_in: gpt-oss's experts are
 * stored (in, out), their fan-in is not their last dimension. */
static void took_fan_in(walk_t *k, int64_t fan_in)
{
    if (k->base && k->n > 0) k->w->list[k->n - 1].fan_in = fan_in;
}

/* Multi-head latent attention's tensors (DeepSeek). */
static void walk_mla(walk_t *k, const cfg_model_t *c, wts_layer_t *y, int l)
{
    int64_t d = c->hidden_size, H = c->num_attention_heads, ql = c->q_lora_rank,
            lora = c->kv_lora_rank, rope = c->qk_rope_head_dim,
            qk = c->qk_nope_head_dim + rope, vd = c->v_head_dim;
    y->attn_norm = take(k, WTS_ATTN_NORM, l, 0, 1, d, 0, 0);
    if (ql > 0) {
        y->q_a = take(k, WTS_Q_A, l, 0, 2, ql, d, 0);
        y->q_a_norm = take(k, WTS_Q_A_NORM, l, 0, 1, ql, 0, 0);
        y->q_b = take(k, WTS_Q_B, l, 0, 2, H * qk, ql, 0);
    } else {
        y->wq = take(k, WTS_Q, l, 0, 2, H * qk, d, 0);
    }
    y->kv_a = take(k, WTS_KV_A, l, 0, 2, lora + rope, d, 0);
    y->kv_a_norm = take(k, WTS_KV_A_NORM, l, 0, 1, lora, 0, 0);
    y->kv_b = take(k, WTS_KV_B, l, 0, 2, H * (c->qk_nope_head_dim + vd), lora, 0);
    y->wo = take(k, WTS_O, l, 0, 2, d, H * vd, 0);
}

static void walk_attention(walk_t *k, const cfg_model_t *c, wts_layer_t *y, int l)
{
    if (c->kv_lora_rank > 0) {
        walk_mla(k, c, y, l);
        return;
    }
    int64_t d = c->hidden_size, hd = c->head_dim;
    int64_t qd = c->num_attention_heads * hd, kvd = c->num_key_value_heads * hd;
    y->attn_norm = take(k, WTS_ATTN_NORM, l, 0, 1, d, 0, 0);
    y->wq = take(k, WTS_Q, l, 0, 2, qd, d, 0);
    y->wk = take(k, WTS_K, l, 0, 2, kvd, d, 0);
    y->wv = take(k, WTS_V, l, 0, 2, kvd, d, 0);
    y->wo = take(k, WTS_O, l, 0, 2, d, qd, 0);
    if (c->qkv_bias) {
        y->bq = take(k, WTS_BQ, l, 0, 1, qd, 0, 0);
        y->bk = take(k, WTS_BK, l, 0, 1, kvd, 0, 0);
        y->bv = take(k, WTS_BV, l, 0, 1, kvd, 0, 0);
    }
    if (c->o_bias) y->bo = take(k, WTS_BO, l, 0, 1, d, 0, 0);
    if (c->sinks) y->sinks = take(k, WTS_SINKS, l, 0, 1, c->num_attention_heads, 0, 0);
    if (c->qk_norm != LAYER_QKNORM_NONE) {
        bool head = c->qk_norm == LAYER_QKNORM_HEAD;
        y->qn = take(k, WTS_QN, l, 0, 1, head ? hd : qd, 0, 0);
        y->kn = take(k, WTS_KN, l, 0, 1, head ? hd : kvd, 0, 0);
    }
}

/* The routed experts: one tensor per matrix, or GraniteMoE's two. */
static void walk_experts(walk_t *k, const cfg_model_t *c, wts_layer_t *y, int l)
{
    const wts_names_t *nm = k->nm;
    int64_t d = c->hidden_size, F = c->intermediate_size;
    int E = c->num_local_experts;
    bool silu = c->hidden_act == LAYER_ACT_SILU;
    if (nm->gate_up) { /* gpt-oss: (in, out) with biases */
        float *gu = take(k, WTS_GATE_UP, l, 0, 3, E, d, 2 * F);
        took_fan_in(k, d);
        float *gub = take(k, WTS_GATE_UP_BIAS, l, 0, 2, E, 2 * F, 0);
        took_fan_in(k, d);
        float *dn = take(k, WTS_DOWN, l, 0, 3, E, F, d);
        took_fan_in(k, F);
        float *dnb = take(k, WTS_DOWN_BIAS, l, 0, 2, E, d, 0);
        took_fan_in(k, F);
        for (int e = 0; gu && e < E; e++) {
            y->w1[e] = gu + (size_t)e * d * 2 * F, y->b13[e] = gub + (size_t)e * 2 * F;
            y->w2[e] = dn + (size_t)e * F * d, y->b2[e] = dnb + (size_t)e * d;
        }
        return;
    }
    if (nm->fused_in) {
        float *in = take(k, WTS_FUSED_IN, l, 0, 3, E, 2 * F, d);
        float *out = take(k, WTS_FUSED_OUT, l, 0, 3, E, d, F);
        for (int e = 0; in && e < E; e++) {
            y->w1[e] = in + (size_t)e * 2 * F * d;
            y->w3[e] = y->w1[e] + (size_t)F * d;
            y->w2[e] = out + (size_t)e * d * F;
        }
        return;
    }
    for (int e = 0; e < E; e++) {
        float *w1 = take(k, WTS_E1, l, e, 2, F, d, 0), *w2 = take(k, WTS_E2, l, e, 2, d, F, 0);
        float *w3 = silu ? take(k, WTS_E3, l, e, 2, F, d, 0) : NULL;
        if (w1) y->w1[e] = w1, y->w2[e] = w2, y->w3[e] = w3;
    }
}

/* An MLP of F: w1, w2 and (SwiGLU) w3 of the kinds f, into w[0..2]. */
static void walk_mlp(walk_t *k, const cfg_model_t *c, const wts_kind_t f[3], int l, int j,
                     int64_t F, float *w[3])
{
    int64_t d = c->hidden_size;
    w[0] = take(k, f[0], l, j, 2, F, d, 0);
    w[1] = take(k, f[1], l, j, 2, d, F, 0);
    w[2] = c->hidden_act == LAYER_ACT_SILU ? take(k, f[2], l, j, 2, F, d, 0) : NULL;
}

static void walk_layer(walk_t *k, const cfg_model_t *c, wts_layer_t *y, int l)
{
    const wts_names_t *nm = k->nm;
    int64_t d = c->hidden_size;
    float *w[3];
    walk_attention(k, c, y, l);
    y->moe_norm = take(k, WTS_MLP_NORM, l, 0, 1, d, 0, 0);
    if (cfg_layer_dense(c, l)) {
        const wts_kind_t f[3] = {WTS_D1, WTS_D2, WTS_D3};
        walk_mlp(k, c, f, l, 0, c->dense_intermediate_size, w);
        y->dw1 = w[0], y->dw2 = w[1], y->dw3 = w[2];
        return;
    }
    y->gate = take(k, WTS_ROUTER, l, 0, 2, c->num_local_experts, d, 0);
    if (c->gate_bias) y->gate_bias = take(k, WTS_GATE_BIAS, l, 0, 1, c->num_local_experts, 0, 0);
    if (nm->router_bias)
        y->router_bias = take(k, WTS_ROUTER_BIAS, l, 0, 1, c->num_local_experts, 0, 0);
    walk_experts(k, c, y, l);
    const wts_kind_t f[3] = {WTS_S1, WTS_S2, WTS_S3};
    for (int j = 0; j < c->num_shared_experts; j++) {
        walk_mlp(k, c, f, l, j, c->shared_expert_intermediate_size, w);
        if (w[0]) y->sw1[j] = w[0], y->sw2[j] = w[1], y->sw3[j] = w[2];
    }
    if (c->shared_gate) y->sgate = take(k, WTS_SGATE, l, 0, 2, 1, d, 0);
}

static void walk(walk_t *k)
{
    wts_t *w = k->w;
    const cfg_model_t *c = &w->cfg;
    int64_t V = c->vocab_size, d = c->hidden_size;
    w->embed = take(k, WTS_EMBED, 0, 0, 2, V, d, 0);
    for (int l = 0; l < c->num_hidden_layers; l++) walk_layer(k, c, &w->layers[l], l);
    w->final_norm = take(k, WTS_FINAL_NORM, 0, 0, 1, d, 0, 0);
    w->lm_head = c->tie_word_embeddings ? w->embed : take(k, WTS_LM_HEAD, 0, 0, 2, V, d, 0);
}

int wts_tensor_count(const wts_t *w) { return w->n_list; }

void wts_tensor_at(const wts_t *w, int i, wts_tensor_t *out) { *out = w->list[i]; }

/* ---- Boxes */

int64_t wts_tensor_rows(const wts_tensor_t *t)
{
    int64_t n = 1;
    for (int i = 0; i + 1 < t->ndim; i++) n *= t->shape[i];
    return n;
}

int64_t wts_tensor_cols(const wts_tensor_t *t) { return t->shape[t->ndim - 1]; }

static bool box_empty(const wts_box_t *b) { return b->r0 >= b->r1 || b->c0 >= b->c1; }

int64_t wts_box_elems(const wts_box_t *b)
{
    return box_empty(b) ? 0 : (b->r1 - b->r0) * (b->c1 - b->c0);
}

void wts_box_union(wts_box_t *acc, const wts_box_t *b)
{
    if (box_empty(b)) return;
    if (box_empty(acc)) {
        *acc = *b;
        return;
    }
    acc->r0 = b->r0 < acc->r0 ? b->r0 : acc->r0;
    acc->r1 = b->r1 > acc->r1 ? b->r1 : acc->r1;
    acc->c0 = b->c0 < acc->c0 ? b->c0 : acc->c0;
    acc->c1 = b->c1 > acc->c1 ? b->c1 : acc->c1;
}

static wts_box_t box_whole(const wts_tensor_t *t)
{
    return (wts_box_t){0, wts_tensor_rows(t), 0, wts_tensor_cols(t)};
}

void wts_boxes_for(const wts_t *w, const par_strategy_t *s, const int *ranks, int n,
                   wts_box_t *out)
{
    const model_family_t *f = family_of(&w->cfg);
    for (int i = 0; i < w->n_list; i++) out[i] = (wts_box_t){0};
    for (int k = 0; k < n; k++) {
        model_place_t p;
        f->place(&w->cfg, s, ranks ? ranks[k] : k, &p);
        for (int i = 0; i < w->n_list; i++) {
            wts_box_t b;
            f->reads(&w->cfg, &p, &w->list[i], &b);
            wts_box_union(&out[i], &b);
        }
    }
}

/* ---- FP8 storage: e4m3 values times a power-of-two scale per block of
 * the last two dimensions (UE8M0 scales, as DeepSeek-V3.1's checkpoints
 * and MXFP8 keep them), so that a generated tensor rounded to it is
 * dumped and loaded back exactly: q * s and x / s are exact. */

typedef struct {
    int64_t mats, R, C, SR, SC; /* matrices, their rows, columns, blocks */
    int br, bc;
} fp8_grid_t;

static fp8_grid_t fp8_grid(const wts_t *w, const wts_tensor_t *t)
{
    int nd = t->ndim, br = w->cfg.fp8_block_r, bc = w->cfg.fp8_block_c;
    fp8_grid_t g = {.mats = nd == 3 ? t->shape[0] : 1, .R = t->shape[nd - 2],
                    .C = t->shape[nd - 1], .br = br, .bc = bc};
    g.SR = (g.R + br - 1) / br;
    g.SC = (g.C + bc - 1) / bc;
    return g;
}

/* The scale of element (row gr of the 2-D view, column c): its matrix's
 * block. */
static int64_t fp8_block_of(const fp8_grid_t *g, int64_t gr, int64_t c)
{
    return ((gr / g->R) * g->SR + (gr % g->R) / g->br) * g->SC + c / g->bc;
}

void wts_box_generated(const wts_t *w, int i, const wts_box_t *b, wts_box_t *out)
{
    const wts_tensor_t *t = &w->list[i];
    *out = box_empty(b) ? (wts_box_t){0} : *b;
    if (!t->fp8 || box_empty(b)) return;
    /* rows out to their blocks' ends, which a matrix's end cuts */
    fp8_grid_t g = fp8_grid(w, t);
    int64_t last = b->r1 - 1, end = (last % g.R / g.br + 1) * g.br;
    out->r0 = b->r0 / g.R * g.R + b->r0 % g.R / g.br * g.br;
    out->r1 = last / g.R * g.R + (end < g.R ? end : g.R);
    out->c0 = b->c0 / g.bc * g.bc;
    out->c1 = (b->c1 + g.bc - 1) / g.bc * g.bc;
    if (out->c1 > g.C) out->c1 = g.C;
}

/* The least power of two s with amax / s <= 448, e4m3's largest value. */
static float fp8_scale(float amax)
{
    if (!(amax > 0)) return 1.0f;
    int e;
    float f = frexpf(amax / 448.0f, &e);
    return ldexpf(1.0f, f == 0.5f ? e - 1 : e);
}

/* The block scales of t's whole blocks in b into sc (mats x SR x SC; the
 * others 1); NULL when out of memory. */
static float *fp8_scales(const wts_tensor_t *t, const fp8_grid_t *g, const wts_box_t *b)
{
    float *sc = calloc((size_t)(g->mats * g->SR * g->SC), sizeof *sc);
    for (int64_t r = b->r0; sc && r < b->r1; r++)
        for (int64_t c = b->c0; c < b->c1; c++) {
            float *s = &sc[fp8_block_of(g, r, c)], x = fabsf(t->data[r * g->C + c]);
            if (x > *s) *s = x;
        }
    for (int64_t i = 0; sc && i < g->mats * g->SR * g->SC; i++) sc[i] = fp8_scale(sc[i]);
    return sc;
}

/* Box b of out (laid out as t) = t / its scales (what F8_E4M3 stores), or
 * with round the values rounded to e4m3 times the scales (what loading
 * gives back). */
static void fp8_apply(const wts_tensor_t *t, const fp8_grid_t *g, const wts_box_t *b,
                      const float *sc, float *out, bool round)
{
    for (int64_t r = b->r0; r < b->r1; r++)
        for (int64_t c = b->c0; c < b->c1; c++) {
            float s = sc[fp8_block_of(g, r, c)], x = t->data[r * g->C + c];
            out[r * g->C + c] = round ? emu_e4m3_to_f32(emu_f32_to_e4m3(x / s)) * s : x / s;
        }
}

/* The generated FP8 tensors' boxes (whole blocks) as FP8 stores them. */
static moemu_status_t fp8_round_all(wts_t *w, const wts_box_t *boxes)
{
    for (int i = 0; i < w->n_list; i++) {
        wts_tensor_t *t = &w->list[i];
        if (!t->fp8 || box_empty(&boxes[i])) continue;
        fp8_grid_t g = fp8_grid(w, t);
        float *sc = fp8_scales(t, &g, &boxes[i]);
        if (!sc) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the FP8 scales of %s",
                                   t->name);
        fp8_apply(t, &g, &boxes[i], sc, t->data, true);
        free(sc);
    }
    return MOEMU_OK;
}

/* ---- Allocation */

static int64_t count_floats(const cfg_model_t *c)
{
    cfg_figures_t f;
    cfg_figures(c, &f);
    return f.total;
}

bool wts_packs(const cfg_model_t *c)
{
    /* the packed tensors' addresses need a 64-bit space (packed_range) */
    return (c->dtype == EMU_DTYPE_FP16 || c->dtype == EMU_DTYPE_BF16) && c->fp8_block_r <= 0 &&
           !c->mxfp4 && sizeof(uintptr_t) >= 8;
}

double wts_host_bytes(const cfg_model_t *cfg, const char *checkpoint)
{
    wts_t lay;
    if (wts_layout_of(&lay, cfg, checkpoint) != MOEMU_OK) return 4.0 * (double)count_floats(cfg);
    double b = 4.0 * (double)lay.n_floats + 2.0 * (double)lay.n_packed;
    if (checkpoint && lay.n_packed) b += 4.0 * (double)(lay.largest_packed + 1); /* load_pack's */
    wts_free(&lay);
    return b;
}

double wts_widen_bytes(const cfg_model_t *cfg, const char *checkpoint)
{
    wts_t lay;
    if (!wts_packs(cfg) || wts_layout_of(&lay, cfg, checkpoint) != MOEMU_OK) return 0;
    double b = lay.n_packed ? 4.0 * layer_packed_buffers() * (double)(lay.largest_packed + 1) : 0;
    wts_free(&lay);
    return b;
}

const uint16_t *wts_packed_at(const wts_t *w, const float *p)
{
    return w->packed + (p - w->shadow);
}

void wts_tensor_read(const wts_t *w, const wts_tensor_t *t, int64_t off, int64_t n, float *out)
{
    if (t->packed) emu_dtype_widen_n(w->cfg.dtype, out, wts_packed_at(w, t->data + off), n);
    else memcpy(out, t->data + off, sizeof(float) * (size_t)n);
}

/* mem bytes of host memory and as of address space for the weights. */
static moemu_status_t check_host(double mem, double as, const char *what)
{
    emu_need_t need = {.hint = "; a dry run (--math skip) needs none, or use a model with fewer "
                               "layers"};
    emu_need_add(&need, "weights", mem, as);
    return emu_need_check(&need, NULL, what);
}

moemu_status_t wts_check_host_memory(double bytes, const char *what)
{
    return check_host(bytes, bytes, what);
}

/* A dry run never reads or writes a weight, but the layers slice the
 * tensors and tell absent ones (NULL) from present ones: its tensors get
 * the addresses they would have in a block at WTS_NOWHERE, which nothing
 * maps (above the 47 bits of x86-64's and AArch64's user space): no host
 * memory, no address space, and a stray access faults at once. */
#define WTS_NOWHERE (sizeof(uintptr_t) >= 8 ? (uintptr_t)1 << 48 : (uintptr_t)1 << 20)

/* Every tensor placed in a block at base, the packed ones' addresses
 * from pbase (the walk's placing pass, with the counting pass's pack and
 * keep32). */
static void place(wts_t *w, uintptr_t base, uintptr_t pbase, const bool *keep32)
{
    walk_t k = {.w = w, .nm = family_of(&w->cfg)->names, .base = base, .pbase = pbase,
                .pack = w->n_packed > 0, .keep32 = keep32};
    walk(&k);
}

/* The layout without a block: the tensors listed and placed at
 * WTS_NOWHERE, with pack the packed ones' addresses after the others'
 * (but those keep32 keeps in fp32, if not NULL). */
static moemu_status_t wts_layout(wts_t *w, const cfg_model_t *cfg, bool pack, const bool *keep32)
{
    memset(w, 0, sizeof *w);
    w->cfg = *cfg;
    w->address_only = true;
    int L = cfg->num_hidden_layers, E = cfg->num_local_experts, S = cfg->num_shared_experts;
    int64_t n = count_floats(cfg);
    walk_t k = {.w = w, .nm = family_of(cfg)->names, .pack = pack, .keep32 = keep32};
    w->layers = calloc((size_t)L, sizeof *w->layers);
    if (w->layers) walk(&k); /* counting: no block yet */
    w->n_floats = k.floats;
    w->n_packed = k.packed;
    w->largest_packed = k.largest;
    w->ptrs = calloc((size_t)L * (5 * E + 3 * S) + 1, sizeof(float *));
    w->list = calloc((size_t)k.n + 1, sizeof *w->list);
    if (!w->layers || !w->ptrs || !w->list) {
        wts_free(w);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the layout of %s's %d tensors",
                          cfg->name, k.n);
    }
    if (k.floats + k.packed != n) {
        wts_free(w);
        return moemu_fail(MOEMU_ERR_INTERNAL, "weight layout holds %lld values, expected %lld",
                          (long long)(k.floats + k.packed), (long long)n);
    }
    w->n_list = k.n;
    float **pp = w->ptrs;
    for (int l = 0; l < L; l++, pp += 5 * E + 3 * S)
        w->layers[l] = (wts_layer_t){.w1 = pp, .w2 = pp + E, .w3 = pp + 2 * E, .sw1 = pp + 3 * E,
                                     .sw2 = pp + 3 * E + S, .sw3 = pp + 3 * E + 2 * S,
                                     .b13 = pp + 3 * E + 3 * S, .b2 = pp + 4 * E + 3 * S};
    place(w, WTS_NOWHERE, WTS_NOWHERE + sizeof(float) * (uintptr_t)w->n_floats, keep32);
    return MOEMU_OK;
}

/* Host bytes of the boxes that generation fills (widened to FP8
 * blocks), or with rows that loading reads (whole rows); the whole
 * model without boxes. */
static double boxes_bytes(const wts_t *w, const wts_box_t *boxes, bool rows)
{
    double n = 0;
    for (int i = 0; i < w->n_list; i++) {
        const wts_tensor_t *t = &w->list[i];
        wts_box_t b = box_whole(t);
        if (boxes && rows) b = boxes[i], b.c0 = 0, b.c1 = wts_tensor_cols(t);
        else if (boxes) wts_box_generated(w, i, &boxes[i], &b);
        n += (t->packed ? 2.0 : 4.0) * (double)wts_box_elems(&b);
    }
    return n;
}

#ifndef MAP_NORESERVE
#define MAP_NORESERVE 0
#endif

/* The block is an anonymous mapping: its pages are zeros until written and
 * cost no memory before, so that a rank filling a part of the model keeps
 * only that part resident; MAP_NORESERVE so that overcommit's heuristic
 * does not refuse a block larger than the host of which a part is used. */
/* whole: every float will be written. Then the block asks for huge pages:
 * first touch of 4 KiB pages was most of the time of generating (a fault
 * per 1024 floats); a sparse block (a device's boxes) keeps small pages,
 * which hold only what is written. */
static void *block_map(size_t len, bool whole)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    if (whole) madvise(p, len, MADV_HUGEPAGE); /* advice: without it, small pages */
#endif
    return p;
}

/* Every non-empty box inside its tensor. */
static moemu_status_t check_boxes(const wts_t *w, const wts_box_t *boxes)
{
    for (int i = 0; boxes && i < w->n_list; i++) {
        const wts_box_t *b = &boxes[i];
        const wts_tensor_t *t = &w->list[i];
        if (!box_empty(b) && (b->r0 < 0 || b->r1 > wts_tensor_rows(t) || b->c0 < 0 ||
                              b->c1 > wts_tensor_cols(t)))
            return moemu_fail(MOEMU_ERR_INVALID, "box [%lld, %lld) x [%lld, %lld) of %s: outside "
                              "its %lld x %lld", (long long)b->r0, (long long)b->r1,
                              (long long)b->c0, (long long)b->c1, t->name,
                              (long long)wts_tensor_rows(t), (long long)wts_tensor_cols(t));
    }
    return MOEMU_OK;
}

/* The packed tensors' addresses: a range of WTS_NOWHERE's space of its
 * own, so that the layers tell each model's packed weights apart
 * (layer_packed_add); as unmapped as WTS_NOWHERE. */
static uintptr_t packed_range(void)
{
    static atomic_uint next;
    return WTS_NOWHERE + ((uintptr_t)(1 + atomic_fetch_add(&next, 1) % 32768) << 44);
}

/* The layout in host memory (with pack, the matrices packed), checked
 * first against the host for the boxes' bytes (boxes_bytes) and the whole
 * blocks' address space. */
static moemu_status_t wts_alloc(wts_t *w, const cfg_model_t *cfg, const wts_box_t *boxes,
                                bool rows, bool pack, const bool *keep32)
{
    MOEMU_CHECK(wts_layout(w, cfg, pack, keep32));
    double all = boxes_bytes(w, NULL, false), need = boxes_bytes(w, boxes, rows);
    if (rows && w->n_packed) need += 4.0 * (double)(w->largest_packed + 1); /* load_pack's */
    const char *in = w->n_packed ? emu_dtype_name(cfg->dtype) : "fp32";
    char what[160];
    if (boxes)
        snprintf(what, sizeof what, "model %s (%.3g of its %.3g GB in %s)", cfg->name, need / 1e9,
                 all / 1e9, in);
    else
        snprintf(what, sizeof what, "model %s (%.3g GB in %s)", cfg->name, all / 1e9, in);
    moemu_status_t st = check_boxes(w, boxes);
    if (st == MOEMU_OK) st = check_host(need, all, what);
    size_t fb = sizeof(float) * (size_t)w->n_floats, pb = 2 * (size_t)w->n_packed;
    if (st == MOEMU_OK && (!(w->block = block_map(fb, !boxes)) ||
                           (pb && !(w->packed = block_map(pb, !boxes)))))
        st = moemu_fail(MOEMU_ERR_NOMEM, "cannot map %.2f GB for the weights of %s", all / 1e9,
                        cfg->name);
    if (st == MOEMU_OK && pb) {
        w->shadow = (float *)packed_range();
        st = layer_packed_add(w->shadow, w->shadow + w->n_packed, w->packed, cfg->dtype,
                              w->largest_packed);
        if (st != MOEMU_OK) w->shadow = NULL;
    }
    if (st != MOEMU_OK) {
        wts_free(w);
        return st;
    }
    w->address_only = false;
    place(w, (uintptr_t)w->block, pb ? (uintptr_t)w->shadow : 0, keep32);
    return MOEMU_OK;
}

/* ---- Generation: split into chunks of about GEN_CHUNK elements (whole
 * rows of a box) that host threads take in turn; every element is a pure
 * function of its index, so the result never depends on the threads. */
enum { GEN_CHUNK = 1 << 22 };

typedef struct {
    const wts_t *w;
    const wts_box_t *boxes; /* (n_tensors) what to fill */
    uint64_t seed;
    int n_tensors;
    atomic_long next; /* next chunk, counted over all tensors */
    long *first;      /* (n_tensors + 1) first chunk of each tensor */
} gen_job_t;

/* Rows of box b a chunk takes. */
static int64_t chunk_rows(const wts_box_t *b)
{
    int64_t width = b->c1 - b->c0;
    return width >= GEN_CHUNK ? 1 : GEN_CHUNK / width;
}

/* Elements [at, at + n) of tensor t, packed or not. */
static void gen_span(const gen_job_t *job, const wts_tensor_t *t, int64_t at, int64_t n)
{
    emu_dtype_t dt = job->w->cfg.dtype;
    if (t->packed)
        wts_generate_packed((uint16_t *)wts_packed_at(job->w, t->data + at), job->seed, t->name,
                            t->fan_in, at, n, dt);
    else
        wts_generate(t->data + at, job->seed, t->name, t->fan_in, at, n, dt);
}

/* Rows [r0, r1) of box b of tensor t: one run when b spans whole rows. */
static void gen_rows(const gen_job_t *job, const wts_tensor_t *t, const wts_box_t *b, int64_t r0,
                     int64_t r1)
{
    int64_t C = wts_tensor_cols(t), width = b->c1 - b->c0;
    if (width == C) {
        gen_span(job, t, r0 * C, (r1 - r0) * C);
        return;
    }
    for (int64_t r = r0; r < r1; r++) gen_span(job, t, r * C + b->c0, width);
}

static void *gen_worker(void *arg)
{
    gen_job_t *job = arg;
    for (;;) {
        long c = atomic_fetch_add(&job->next, 1);
        if (c >= job->first[job->n_tensors]) return NULL;
        int lo = 0, hi = job->n_tensors - 1; /* the tensor i with first[i] <= c < first[i + 1] */
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (job->first[mid] <= c) lo = mid;
            else hi = mid - 1;
        }
        const wts_box_t *b = &job->boxes[lo];
        int64_t per = chunk_rows(b), r0 = b->r0 + (int64_t)(c - job->first[lo]) * per;
        gen_rows(job, &job->w->list[lo], b, r0, r0 + per < b->r1 ? r0 + per : b->r1);
    }
}

/* Fill the boxes of w, on the host's cores. */
static moemu_status_t gen_run(const wts_t *w, uint64_t seed, const wts_box_t *boxes)
{
    int n = w->n_list;
    gen_job_t job = {.w = w, .boxes = boxes, .seed = seed, .n_tensors = n};
    atomic_init(&job.next, 0);
    job.first = calloc((size_t)n + 1, sizeof(long));
    if (!job.first) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the generation plan");
    for (int i = 0; i < n; i++) {
        const wts_box_t *b = &boxes[i];
        int64_t per = box_empty(b) ? 1 : chunk_rows(b), rows = box_empty(b) ? 0 : b->r1 - b->r0;
        job.first[i + 1] = job.first[i] + (long)((rows + per - 1) / per);
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = cores > 1 ? (int)(cores < 64 ? cores : 64) : 1;
    pthread_t th[64];
    int started = 0;
    for (int i = 1; i < nt; i++)
        if (pthread_create(&th[started], NULL, gen_worker, &job) == 0) started++;
    gen_worker(&job); /* this thread works too: no thread is required */
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    free(job.first);
    return MOEMU_OK;
}

moemu_status_t wts_generate_boxes(wts_t *w, const cfg_model_t *cfg, uint64_t seed,
                                  const wts_box_t *boxes)
{
    MOEMU_CHECK(wts_alloc(w, cfg, boxes, false, wts_packs(cfg), NULL));
    wts_box_t *fill = calloc((size_t)w->n_list + 1, sizeof *fill);
    moemu_status_t st = fill ? MOEMU_OK
                             : moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the boxes of %s",
                                          cfg->name);
    for (int i = 0; fill && i < w->n_list; i++) {
        if (boxes) wts_box_generated(w, i, &boxes[i], &fill[i]);
        else fill[i] = box_whole(&w->list[i]);
    }
    if (st == MOEMU_OK) st = gen_run(w, seed, fill);
    if (st == MOEMU_OK) st = fp8_round_all(w, fill);
    free(fill);
    if (st != MOEMU_OK) wts_free(w);
    return st;
}

moemu_status_t wts_generate_all(wts_t *w, const cfg_model_t *cfg, uint64_t seed)
{
    return wts_generate_boxes(w, cfg, seed, NULL);
}

/* DeepSeek's checkpoints carry num_nextn_predict_layers multi-token
 * prediction layers after the model's (model.layers.L, ...): moemu
 * neither runs nor loads them. */
static bool mtp_layer(const char *name, void *arg)
{
    const cfg_model_t *c = arg;
    int l, n = 0;
    if (sscanf(name, "model.layers.%d.%n", &l, &n) != 1 || n == 0) return false;
    return l >= c->num_hidden_layers && l < c->num_hidden_layers + c->num_nextn_predict_layers;
}

/* What to read of w's tensors: the wants and, with boxes, each one's rows
 * (NULL without); both the caller's. */
/* The tensors a load of cfg from ck keeps in fp32, per tensor of the
 * layout's list, into *keep (the caller frees it): all but those ck
 * stores in the model's dtype, which packing keeps exactly; NULL when the
 * model does not pack. */
static moemu_status_t load_keep32(const cfg_model_t *cfg, const ckpt_t *ck, bool **keep)
{
    *keep = NULL;
    if (!wts_packs(cfg)) return MOEMU_OK;
    wts_t lay;
    MOEMU_CHECK(wts_layout(&lay, cfg, false, NULL));
    st_dtype_t dt = cfg->dtype == EMU_DTYPE_FP16 ? ST_F16 : ST_BF16;
    *keep = malloc((size_t)lay.n_list + 1);
    for (int i = 0; *keep && i < lay.n_list; i++) {
        int j = ckpt_index(ck, lay.list[i].name);
        (*keep)[i] = j < 0 || ckpt_at(ck, j)->dtype != dt;
    }
    int n = lay.n_list;
    wts_free(&lay);
    return *keep ? MOEMU_OK
                 : moemu_fail(MOEMU_ERR_NOMEM, "out of memory for the %d tensors of %s", n,
                              cfg->name);
}

moemu_status_t wts_layout_of(wts_t *w, const cfg_model_t *cfg, const char *checkpoint)
{
    if (!checkpoint || !wts_packs(cfg)) return wts_layout(w, cfg, checkpoint == NULL, NULL);
    ckpt_t *ck;
    MOEMU_CHECK(ckpt_open(checkpoint, &ck));
    bool *keep;
    moemu_status_t st = load_keep32(cfg, ck, &keep);
    if (st == MOEMU_OK) st = wts_layout(w, cfg, true, keep);
    free(keep);
    ckpt_close(ck);
    return st;
}

/* A packed tensor's values, read into a staging buffer (its want's out),
 * packed into place as each is read: its rows of the box, or whole. */
typedef struct {
    const wts_t *w;
    const float *stage;
    const ckpt_rows_t *rows;
} load_pack_t;

static void load_pack(int i, void *arg)
{
    const load_pack_t *a = arg;
    const wts_tensor_t *t = &a->w->list[i];
    if (!t->packed) return;
    int64_t C = wts_tensor_cols(t), r0 = a->rows ? a->rows[i].r0 : 0,
            r1 = a->rows ? a->rows[i].r1 : wts_tensor_rows(t);
    if (r1 > r0)
        emu_dtype_pack_n(a->w->cfg.dtype, (uint16_t *)wts_packed_at(a->w, t->data + r0 * C),
                         a->stage + r0 * C, (r1 - r0) * C);
}

static moemu_status_t load_plan(const wts_t *w, const wts_box_t *boxes, float *stage,
                                ckpt_want_t **want, ckpt_rows_t **rows)
{
    *want = calloc((size_t)w->n_list + 1, sizeof **want);
    *rows = boxes ? calloc((size_t)w->n_list + 1, sizeof **rows) : NULL;
    if (!*want || (boxes && !*rows)) {
        free(*want), free(*rows);
        *want = NULL, *rows = NULL;
        return moemu_fail(MOEMU_ERR_NOMEM, "out of memory for the %d tensors of %s", w->n_list,
                          w->cfg.name);
    }
    for (int i = 0; i < w->n_list; i++) {
        const wts_tensor_t *t = &w->list[i];
        (*want)[i] = (ckpt_want_t){.name = t->name, .ndim = t->ndim, .shape = t->shape,
                                   .out = t->packed ? stage : t->data};
        if (boxes) (*rows)[i] = box_empty(&boxes[i]) ? (ckpt_rows_t){0, 0}
                                                     : (ckpt_rows_t){boxes[i].r0, boxes[i].r1};
    }
    return MOEMU_OK;
}

/* The tensors of the model, read from the checkpoint at path (a file, a
 * directory of shards or their index): each problem of the checkpoint
 * (missing, unexpected, misshapen, non-finite tensors) named at once. */
moemu_status_t wts_load_boxes(wts_t *w, const cfg_model_t *cfg, const char *path,
                              const wts_box_t *boxes)
{
    ckpt_t *ck;
    MOEMU_CHECK(ckpt_open(path, &ck));
    ckpt_want_t *want = NULL;
    ckpt_rows_t *rows = NULL;
    float *stage = NULL;
    bool *keep;
    moemu_status_t st = load_keep32(cfg, ck, &keep);
    if (st == MOEMU_OK) st = wts_alloc(w, cfg, boxes, true, wts_packs(cfg), keep);
    if (st == MOEMU_OK && w->n_packed &&
        !(stage = malloc(sizeof(float) * (size_t)(w->largest_packed + 1))))
        st = moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %.3g GB to load %s",
                        4e-9 * (double)w->largest_packed, cfg->name);
    if (st == MOEMU_OK) st = load_plan(w, boxes, stage, &want, &rows);
    load_pack_t lp = {w, stage, rows};
    ckpt_read_opts_t o = {.ignore = mtp_layer, .arg = (void *)cfg, .block_r = cfg->fp8_block_r,
                          .block_c = cfg->fp8_block_c, .rows = rows, .read = load_pack,
                          .read_arg = &lp};
    if (st == MOEMU_OK) st = ckpt_read_all_opts(ck, want, w->n_list, cfg->name, &o);
    if (st != MOEMU_OK && w->block) wts_free(w);
    free(want);
    free(rows);
    free(stage);
    free(keep);
    ckpt_close(ck);
    return st;
}

moemu_status_t wts_load(wts_t *w, const cfg_model_t *cfg, const char *path)
{
    return wts_load_boxes(w, cfg, path, NULL);
}

/* Tensor t as a checkpoint stores it: ts[0] (and with FP8, its scales
 * ts[1]); *m becomes the entries used, own[0..*m) what the caller frees
 * after (a packed tensor widened, FP8's values and scales). Fails only
 * when out of memory. */
static bool dump_entry(const wts_t *w, const wts_tensor_t *t, st_dtype_t dt,
                       st_write_tensor_t *ts, st_dtype_t *dts, void **own, char *sname,
                       size_t cap, int *m)
{
    ts[0] = (st_write_tensor_t){.name = t->name, .ndim = t->ndim, .data = t->data};
    for (int j = 0; j < t->ndim; j++) ts[0].shape[j] = t->shape[j];
    dts[0] = dt;
    *m = 1;
    if (t->packed) {
        int64_t n = wts_tensor_rows(t) * wts_tensor_cols(t);
        float *x = own[0] = malloc(sizeof(float) * (size_t)(n + 1));
        if (!x) return false;
        wts_tensor_read(w, t, 0, n, x);
        ts[0].data = x;
    }
    if (!t->fp8) return true;
    fp8_grid_t g = fp8_grid(w, t);
    wts_box_t all = box_whole(t);
    float *sc = fp8_scales(t, &g, &all), *q = malloc(sizeof(float) * (size_t)wts_box_elems(&all));
    if (!sc || !q) {
        free(sc), free(q);
        return false;
    }
    fp8_apply(t, &g, &all, sc, q, false);
    own[0] = q, own[1] = sc;
    snprintf(sname, cap, "%s_scale_inv", t->name);
    ts[0].data = q, dts[0] = ST_F8_E4M3;
    ts[1] = (st_write_tensor_t){.name = sname, .ndim = t->ndim, .data = sc};
    for (int j = 0; j < t->ndim; j++) ts[1].shape[j] = t->shape[j];
    ts[1].shape[t->ndim - 2] = g.SR, ts[1].shape[t->ndim - 1] = g.SC;
    dts[1] = ST_F32;
    *m = 2;
    return true;
}

moemu_status_t wts_dump(const wts_t *w, const char *path, int64_t shard_bytes)
{
    int n = wts_tensor_count(w), m = 0;
    st_write_tensor_t *ts = calloc(2 * (size_t)n + 1, sizeof *ts);
    st_dtype_t *dts = calloc(2 * (size_t)n + 1, sizeof *dts);
    void **own = calloc(2 * (size_t)n + 1, sizeof *own);
    char(*names)[160] = calloc((size_t)n + 1, sizeof *names);
    st_dtype_t dt = w->cfg.dtype == EMU_DTYPE_FP16   ? ST_F16
                    : w->cfg.dtype == EMU_DTYPE_BF16 ? ST_BF16
                                                     : ST_F32;
    bool ok = ts && dts && own && names;
    for (int i = 0, used = 0; ok && i < n; i++, m += used)
        ok = dump_entry(w, &w->list[i], dt, ts + m, dts + m, own + m, names[i], sizeof names[i],
                        &used);
    moemu_status_t st = ok ? ckpt_write_dtypes(path, ts, m, dts, shard_bytes)
                           : moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the checkpoint of %s",
                                        w->cfg.name);
    for (int i = 0; own && i < 2 * n; i++) free(own[i]);
    free(ts), free(dts), free(own), free(names);
    return st;
}

moemu_status_t wts_unpack(wts_t *w)
{
    if (!w->packed) return MOEMU_OK;
    wts_t u;
    MOEMU_CHECK(wts_alloc(&u, &w->cfg, NULL, true, false, NULL));
    for (int i = 0; i < w->n_list; i++) {
        const wts_tensor_t *t = &w->list[i];
        wts_tensor_read(w, t, 0, wts_tensor_rows(t) * wts_tensor_cols(t), u.list[i].data);
    }
    wts_free(w);
    *w = u;
    return MOEMU_OK;
}

moemu_status_t wts_address_only(wts_t *w, const cfg_model_t *cfg)
{
    return wts_layout(w, cfg, wts_packs(cfg), NULL);
}

void wts_free(wts_t *w)
{
    if (w->shadow) layer_packed_remove(w->shadow);
    if (w->packed) munmap(w->packed, 2 * (size_t)w->n_packed);
    if (w->block) munmap(w->block, sizeof(float) * (size_t)w->n_floats);
    free(w->layers);
    free(w->ptrs);
    free(w->list);
    memset(w, 0, sizeof *w);
}
