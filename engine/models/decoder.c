/* The decoder the Hugging Face MoE families share: pre-norm attention and
 * a mixture of experts (or a dense MLP) per layer, as modeling_mixtral.py
 * computes it, with the variations cfg_model_t holds (biases, query/key
 * norms, routers, gated shared experts, dense layers, Granite's
 * multipliers; DESIGN.md and docs/semantics.md). */
#include <math.h>

#include "engine/models/family.h"

/* Heads, shared experts and dense MLPs split over TP; a rank's query
 * heads must share whole key/value heads, or one (Megatron-Core's rule
 * for grouped-query attention). */
static void dec_rules(const void *model, const par_strategy_t *s, moemu_problems_t *p)
{
    const cfg_model_t *c = model;
    int H = c->num_attention_heads, Hkv = c->num_key_value_heads;
    if (H % s->tp != 0)
        moemu_problem(p, "TP=%d does not divide the %d query heads", s->tp, H);
    else if (Hkv % s->tp != 0 && s->tp % Hkv != 0)
        moemu_problem(p, "TP=%d neither divides nor is a multiple of the %d key/value heads", s->tp,
                      Hkv);
    if (c->num_shared_experts > 0 && c->shared_expert_intermediate_size % s->tp != 0)
        moemu_problem(p, "TP=%d does not divide the shared experts' intermediate size %d", s->tp,
                      c->shared_expert_intermediate_size);
    if (c->num_dense_layers > 0 && c->dense_intermediate_size % s->tp != 0)
        moemu_problem(p, "TP=%d does not divide the dense layers' intermediate size %d", s->tp,
                      c->dense_intermediate_size);
}

void dec_dims(const cfg_model_t *c, par_dims_t *m)
{
    *m = (par_dims_t){.layers = c->num_hidden_layers, .experts = c->num_local_experts,
                      .expert_ffn = c->intermediate_size, .rules = dec_rules, .model = c};
}

/* Key/value heads: Hkv/TP when TP divides Hkv, else those the rank's
 * query heads read (h / (H/Hkv), as repeat_kv maps them), replicated. */
static void place_kv(const cfg_model_t *c, const par_strategy_t *s, model_place_t *p)
{
    int H = c->num_attention_heads, Hkv = c->num_key_value_heads, h0 = p->dims.head0;
    if (c->kv_lora_rank > 0) { /* MLA: one latent, every rank's */
        p->kv_replicated = s->tp > 1;
        p->dims.kv_head0 = 0;
        p->kv_head1 = 1;
        return;
    }
    if (Hkv % s->tp == 0) {
        par_split(Hkv, s->tp, p->par.tp, &p->dims.kv_head0, &p->kv_head1);
        return;
    }
    int group = H / Hkv;
    p->kv_replicated = true;
    p->dims.kv_head0 = h0 / group;
    p->kv_head1 = p->head1 > h0 ? (p->head1 - 1) / group + 1 : p->dims.kv_head0;
}

/* DeepSeek's YaRN correction of the softmax scale: yarn_get_mscale of
 * mscale_all_dim, squared (modeling_deepseek_v3.py, inference/model.py). */
static double mla_mscale(const cfg_model_t *c)
{
    if (!(c->yarn_factor > 1) || !(c->yarn_mscale_all_dim > 0)) return 1.0;
    double m = 0.1 * c->yarn_mscale_all_dim * log(c->yarn_factor) + 1.0;
    return m * m;
}

/* MLA's sizes: attention in the latent, rope + lora wide, one key/value
 * row (the latent) shared by every head as key and value. */
static void place_mla(const cfg_model_t *c, model_place_t *p)
{
    layer_dims_t *dm = &p->dims;
    int Hl = dm->Hl;
    dm->q_lora = c->q_lora_rank > 0 ? c->q_lora_rank : 0;
    dm->lora = c->kv_lora_rank;
    dm->nope = c->qk_nope_head_dim;
    dm->rope_d = c->qk_rope_head_dim;
    dm->vd = c->v_head_dim;
    dm->hd = dm->rope_d + dm->lora;
    dm->Hkv = 1;
    dm->kv_shared = true;
    dm->mla_f = dm->q_lora + Hl * (dm->nope + dm->rope_d) + dm->lora + dm->rope_d + Hl * dm->vd;
    dm->rope.dim = dm->rope_d;
    dm->attn_scale = (float)(mla_mscale(c) / sqrt((double)(dm->nope + dm->rope_d)));
}

/* The sizes and scales of the blocks, as layers/ reads them. */
static void place_dims(const cfg_model_t *c, model_place_t *p)
{
    layer_dims_t *dm = &p->dims;
    int shared = p->shared_ffn1 - p->shared_ffn0, dense = p->dense_ffn1 - p->dense_ffn0;
    dm->d = c->hidden_size;
    dm->hd = c->head_dim;
    dm->H = c->num_attention_heads;
    dm->Hkv = c->num_key_value_heads;
    dm->Hl = p->head1 - dm->head0;
    dm->kvl = p->kv_head1 - dm->kv_head0;
    dm->V = c->vocab_size;
    dm->Vl = p->vocab1 - dm->vocab0;
    dm->E = c->num_local_experts;
    dm->k = c->num_experts_per_tok;
    dm->mlp_f = shared > dense ? shared : dense;
    dm->row_f = c->qk_norm == LAYER_QKNORM_WIDTH || c->shared_gate ? 2 : 0;
    dm->eps = (float)c->rms_norm_eps;
    dm->rope = (layer_rope_t){.theta = c->rope_theta, .interleave = c->rope_interleave};
    if (c->yarn_factor > 0)
        layer_rope_yarn(&dm->rope, c->yarn_factor, c->yarn_original_max, c->yarn_beta_fast,
                        c->yarn_beta_slow, c->yarn_mscale, c->yarn_mscale_all_dim,
                        c->yarn_truncate, c->yarn_attention_factor);
    dm->attn_scale = c->attention_multiplier > 0 ? (float)c->attention_multiplier
                                                 : 1.0f / sqrtf((float)c->head_dim);
    if (c->kv_lora_rank > 0) place_mla(c, p);
    dm->embed_mult = (float)c->embedding_multiplier;
    dm->resid_mult = (float)c->residual_multiplier;
    dm->logit_div = (float)c->logits_scaling;
}

void dec_place(const cfg_model_t *c, const par_strategy_t *s, int rank, model_place_t *p)
{
    par_dims_t m;
    dec_dims(c, &m);
    *p = (model_place_t){0};
    par_layout_place(s, &m, rank, &p->par);
    par_split(c->num_attention_heads, s->tp, p->par.tp, &p->dims.head0, &p->head1);
    place_kv(c, s, p);
    if (c->num_shared_experts > 0)
        par_split(c->shared_expert_intermediate_size, s->tp, p->par.tp, &p->shared_ffn0,
                  &p->shared_ffn1);
    if (c->num_dense_layers > 0)
        par_split(c->dense_intermediate_size, s->tp, p->par.tp, &p->dense_ffn0, &p->dense_ffn1);
    layer_vocab_rows(c->vocab_size, s->tp, p->par.tp, &p->dims.vocab0, &p->vocab1);
    place_dims(c, p);
}

/* Of a layer's attention, the elements an FP8 checkpoint keeps in its
 * dtype: norms (MLA's a-norms among them) and biases. */
static double held_attn_kept(const cfg_model_t *c, const model_place_t *p)
{
    double d = c->hidden_size, hd = c->head_dim;
    double ql = (p->head1 - p->dims.head0) * hd, kvl = (p->kv_head1 - p->dims.kv_head0) * hd;
    double n = 2 * d + (c->sinks ? p->head1 - p->dims.head0 : 0);
    if (c->qkv_bias) n += ql + 2 * kvl;
    if (c->o_bias) n += d;
    if (c->qk_norm == LAYER_QKNORM_HEAD) n += 2 * hd;
    if (c->qk_norm == LAYER_QKNORM_WIDTH) n += ql + kvl;
    if (c->kv_lora_rank > 0) n += (c->q_lora_rank > 0 ? c->q_lora_rank : 0) + c->kv_lora_rank;
    return n;
}

/* The attention projections a rank holds in one layer: its heads' rows
 * and columns; MLA's down-projections whole, its heads' rows of q_b_proj
 * and kv_b_proj, its heads' columns of o_proj. */
static double held_attn_proj(const cfg_model_t *c, const model_place_t *p)
{
    double d = c->hidden_size, Hl = p->head1 - p->dims.head0;
    if (c->kv_lora_rank <= 0) {
        double ql = Hl * c->head_dim, kvl = (p->kv_head1 - p->dims.kv_head0) * c->head_dim;
        return 2 * ql * d + 2 * kvl * d;
    }
    double ql = c->q_lora_rank, lora = c->kv_lora_rank, rope = c->qk_rope_head_dim,
           nope = c->qk_nope_head_dim, vd = c->v_head_dim;
    double q = ql > 0 ? ql * d + Hl * (nope + rope) * ql : Hl * (nope + rope) * d;
    return q + (lora + rope) * d + Hl * (nope + vd) * lora + d * Hl * vd;
}

/* Of a layer's MLP part, the elements an FP8 checkpoint keeps in its
 * dtype: the router with its bias, the shared experts' gate, gpt-oss's
 * expert biases (the rank's gate/up slice, the down bias whole). */
static double held_mlp_kept(const cfg_model_t *c, const model_place_t *p, bool dense)
{
    if (dense) return 0;
    const par_place_t *q = &p->par;
    double d = c->hidden_size;
    double biases = c->expert_bias ? (double)(q->expert1 - q->expert0) *
                                         (2.0 * (q->ffn1 - q->ffn0) + d)
                                   : 0;
    return (double)c->num_local_experts * (d + (c->gate_bias || c->expert_bias ? 1 : 0)) +
           (c->shared_gate ? d : 0) + biases;
}

/* The routed experts' and the other MLP products' weights a rank holds in
 * a dense or a MoE layer, into *routed and the return. */
static double held_mlp_proj(const cfg_model_t *c, const model_place_t *p, bool dense,
                            double *routed)
{
    const par_place_t *q = &p->par;
    double d = c->hidden_size, mats = c->hidden_act == LAYER_ACT_GELU ? 2 : 3;
    *routed = 0;
    if (dense) return mats * (p->dense_ffn1 - p->dense_ffn0) * d;
    *routed = (double)(q->expert1 - q->expert0) * mats * (q->ffn1 - q->ffn0) * d;
    return (double)c->num_shared_experts * mats * (p->shared_ffn1 - p->shared_ffn0) * d;
}

double dec_held(const cfg_model_t *c, const model_place_t *p, double *layer_out, double *head_out)
{
    const par_place_t *q = &p->par;
    double d = c->hidden_size, proj = 0, kept = 0, routed = 0, r;
    double att_proj = held_attn_proj(c, p), att_kept = held_attn_kept(c, p);
    for (int l = q->layer0; l < q->layer1; l++) {
        bool dense = cfg_layer_dense(c, l);
        proj += att_proj + held_mlp_proj(c, p, dense, &r);
        routed += r;
        kept += att_kept + held_mlp_kept(c, p, dense);
    }
    double rows = (double)(p->vocab1 - p->dims.vocab0) * d;
    if (q->has_embed) kept += rows;
    if (q->has_lm_head) kept += d + (c->tie_word_embeddings && q->has_embed ? 0 : rows);
    bool moe = cfg_moe_layers(c) > 0;
    if (layer_out)
        *layer_out = att_proj + att_kept + held_mlp_proj(c, p, !moe, &r) + r +
                     held_mlp_kept(c, p, !moe);
    if (head_out) *head_out = d + rows;
    /* an FP8 checkpoint stores the products' weights in FP8, an MXFP4 one
     * the routed experts' in MXFP4, the rest (the embedding and lm_head
     * too) in the dtype */
    return proj * cfg_weight_size(c) + routed * cfg_expert_weight_size(c) +
           kept * (double)emu_dtype_size(c->dtype);
}

static moemu_status_t dec_moe(const model_pass_t *mp)
{
    const cfg_model_t *c = &mp->w->cfg;
    const wts_layer_t *L = &mp->w->layers[mp->layer];
    const model_place_t *pl = mp->place;
    layer_gate_t g = {.bias = L->gate_bias, .sigmoid = c->gate_sigmoid, .norm = c->gate_norm,
                      .group_top2 = c->gate_top2, .n_group = c->n_group,
                      .topk_group = c->topk_group, .scale = (float)c->routed_scaling_factor};
    g.logit_bias = L->router_bias;
    layer_moe_route(mp->v, L->moe_norm, L->gate, c->router,
                    c->router == LAYER_ROUTE_GROUPED || L->router_bias ? &g : NULL);
    mp->chosen(mp);
    int64_t dropped;
    MOEMU_CHECK(layer_moe_capacity(mp->v, c->capacity_factor, &dropped));
    mp->kept(mp, dropped);
    layer_experts_t ex = {.w1 = L->w1, .w3 = L->w3, .w2 = L->w2, .E = c->num_local_experts,
                          .k = c->num_experts_per_tok, .d = c->hidden_size,
                          .F = c->intermediate_size, .e0 = pl->par.expert0, .e1 = pl->par.expert1,
                          .f0 = pl->par.ffn0, .f1 = pl->par.ffn1, .act = c->hidden_act,
                          .b13 = c->expert_bias ? L->b13 : NULL,
                          .b2 = c->expert_bias ? L->b2 : NULL, .limit = (float)c->swiglu_limit,
                          .load = mp->load, .xfer = mp->xfer};
    layer_mlp_t shared = {.w1 = L->sw1, .w3 = L->sw3, .w2 = L->sw2, .S = c->num_shared_experts,
                          .F = c->shared_expert_intermediate_size, .f0 = pl->shared_ffn0,
                          .f1 = pl->shared_ffn1, .act = c->hidden_act, .gate = L->sgate};
    return layer_moe_block(mp->v, &ex, &shared);
}

moemu_status_t dec_layer(const model_pass_t *mp)
{
    const cfg_model_t *c = &mp->w->cfg;
    const wts_layer_t *L = &mp->w->layers[mp->layer];
    const model_place_t *pl = mp->place;
    layer_attn_w_t aw = {.norm = L->attn_norm, .wq = L->wq, .wk = L->wk, .wv = L->wv,
                         .wo = L->wo, .bq = L->bq, .bk = L->bk, .bv = L->bv, .bo = L->bo,
                         .qn = L->qn, .kn = L->kn, .qk_norm = c->qk_norm,
                         .clip = (float)c->clip_qkv, .sinks = L->sinks,
                         .window = cfg_layer_sliding(c, mp->layer) ? c->sliding_window : 0};
    if (c->kv_lora_rank > 0) {
        layer_mla_w_t mw = {.norm = L->attn_norm, .wq = L->wq, .q_a = L->q_a,
                            .q_a_norm = L->q_a_norm, .q_b = L->q_b, .kv_a = L->kv_a,
                            .kv_a_norm = L->kv_a_norm, .kv_b = L->kv_b, .wo = L->wo,
                            .eps = 1e-6f};
        MOEMU_CHECK(layer_mla_block(mp->v, &mw));
    } else {
        MOEMU_CHECK(layer_attention_block(mp->v, &aw));
    }
    if (!cfg_layer_dense(c, mp->layer)) return dec_moe(mp);
    float *const w1[1] = {L->dw1}, *const w3[1] = {L->dw3}, *const w2[1] = {L->dw2};
    layer_mlp_t mlp = {.w1 = w1, .w3 = w3, .w2 = w2, .S = 1, .F = c->dense_intermediate_size,
                       .f0 = pl->dense_ffn0, .f1 = pl->dense_ffn1, .act = c->hidden_act};
    return layer_dense_block(mp->v, L->moe_norm, &mlp);
}

/* ---- What a rank reads of each tensor (the family's reads), as layers/
 * indexes the weights: rows of the projections into heads, columns of
 * the ones out of them, experts and their intermediate slices, rows of
 * the vocabulary; the rest of a held layer whole. */

static const wts_box_t box_none = {0, 0, 0, 0};

/* Rows [r0, r1) of t, every column. */
static wts_box_t box_rows(const wts_tensor_t *t, int64_t r0, int64_t r1)
{
    return (wts_box_t){r0, r1, 0, wts_tensor_cols(t)};
}

/* Columns [c0, c1) of t, every row. */
static wts_box_t box_cols(const wts_tensor_t *t, int64_t c0, int64_t c1)
{
    return (wts_box_t){0, wts_tensor_rows(t), c0, c1};
}

/* The rank's vocabulary rows that exist: the padding of the last TP
 * rank's slice has no row (layer_embed_block, layer_head_block). */
static wts_box_t reads_vocab(const cfg_model_t *c, const model_place_t *p, const wts_tensor_t *t)
{
    int64_t v0 = p->dims.vocab0, v1 = p->vocab1 < c->vocab_size ? p->vocab1 : c->vocab_size;
    return box_rows(t, v0, v1);
}

/* The embedding on the first stage, the final norm and lm_head on the
 * last (a tied embedding is lm_head there). */
static wts_box_t reads_ends(const cfg_model_t *c, const model_place_t *p, const wts_tensor_t *t)
{
    const par_place_t *q = &p->par;
    if (t->kind == WTS_EMBED)
        return q->has_embed || (c->tie_word_embeddings && q->has_lm_head) ? reads_vocab(c, p, t)
                                                                          : box_none;
    if (!q->has_lm_head) return box_none;
    return t->kind == WTS_LM_HEAD ? reads_vocab(c, p, t) : box_rows(t, 0, 1);
}

/* The attention (layer_attention_block's qkv, layer_mla_block): heads
 * [h0, h1)'s rows of q_proj, q_b_proj and kv_b_proj, its columns of
 * o_proj, its key/value heads' rows of k_proj and v_proj, their slices of
 * the biases, sinks and whole-width norms; the rest of the layer (norms,
 * MLA's down-projections, the router and its biases, the shared experts'
 * gate) whole. */
static wts_box_t reads_attn(const cfg_model_t *c, const model_place_t *p, const wts_tensor_t *t)
{
    int64_t h0 = p->dims.head0, h1 = p->head1, g0 = p->dims.kv_head0, g1 = p->kv_head1;
    int64_t hd = c->head_dim, nope = c->qk_nope_head_dim;
    bool mla = c->kv_lora_rank > 0, width = c->qk_norm == LAYER_QKNORM_WIDTH;
    int64_t qrow = mla ? nope + c->qk_rope_head_dim : hd, ocol = mla ? c->v_head_dim : hd;
    switch (t->kind) {
    case WTS_Q:
    case WTS_Q_B: return box_rows(t, h0 * qrow, h1 * qrow);
    case WTS_KV_B: return box_rows(t, h0 * (nope + c->v_head_dim), h1 * (nope + c->v_head_dim));
    case WTS_K:
    case WTS_V: return box_rows(t, g0 * hd, g1 * hd);
    case WTS_O: return box_cols(t, h0 * ocol, h1 * ocol);
    case WTS_BQ: return box_cols(t, h0 * hd, h1 * hd);
    case WTS_BK:
    case WTS_BV: return box_cols(t, g0 * hd, g1 * hd);
    case WTS_SINKS: return box_cols(t, h0, h1);
    case WTS_QN: return width ? box_cols(t, h0 * hd, h1 * hd) : box_rows(t, 0, 1);
    case WTS_KN: return width ? box_cols(t, g0 * hd, g1 * hd) : box_rows(t, 0, 1);
    default: return box_rows(t, 0, wts_tensor_rows(t));
    }
}

/* The routed experts [e0, e1) on the slice [f0, f1) of F, as
 * layers/shard.c's expert_job indexes them: rows of w1 and w3, columns of
 * w2. Stacked experts: GraniteMoE's (E, 2F, d) [w1; w3] and gpt-oss's
 * (E, F, d) down as bounding boxes (exact without ETP), the rest exact;
 * gpt-oss's down bias only on the slice that adds it (f0 == 0). */
static wts_box_t reads_experts(const cfg_model_t *c, const model_place_t *p,
                               const wts_tensor_t *t)
{
    const par_place_t *q = &p->par;
    int64_t e0 = q->expert0, e1 = q->expert1, f0 = q->ffn0, f1 = q->ffn1;
    int64_t F = c->intermediate_size, d = c->hidden_size;
    bool mine = t->expert >= e0 && t->expert < e1;
    if (e1 <= e0) return box_none;
    switch (t->kind) {
    case WTS_E1:
    case WTS_E3: return mine ? box_rows(t, f0, f1) : box_none;
    case WTS_E2: return mine ? box_cols(t, f0, f1) : box_none;
    case WTS_FUSED_IN: return box_rows(t, e0 * 2 * F + f0, (e1 - 1) * 2 * F + F + f1);
    case WTS_FUSED_OUT: return (wts_box_t){e0 * d, e1 * d, f0, f1};
    case WTS_GATE_UP: return (wts_box_t){e0 * d, e1 * d, 2 * f0, 2 * f1}; /* interleaved */
    case WTS_GATE_UP_BIAS: return (wts_box_t){e0, e1, 2 * f0, 2 * f1};
    case WTS_DOWN: return box_rows(t, e0 * F + f0, (e1 - 1) * F + f1);
    default: return f0 == 0 ? box_rows(t, e0, e1) : box_none; /* WTS_DOWN_BIAS */
    }
}

/* The shared experts' and a dense layer's MLP on the rank's TP slice
 * (layer_mlp_block): rows of w1 and w3, columns of w2. */
static wts_box_t reads_mlp(const model_place_t *p, const wts_tensor_t *t)
{
    bool dense = t->kind == WTS_D1 || t->kind == WTS_D2 || t->kind == WTS_D3;
    int64_t f0 = dense ? p->dense_ffn0 : p->shared_ffn0, f1 = dense ? p->dense_ffn1 : p->shared_ffn1;
    return t->kind == WTS_S2 || t->kind == WTS_D2 ? box_cols(t, f0, f1) : box_rows(t, f0, f1);
}

void dec_reads(const cfg_model_t *c, const model_place_t *p, const wts_tensor_t *t, wts_box_t *box)
{
    const par_place_t *q = &p->par;
    switch (t->kind) {
    case WTS_E1: case WTS_E2: case WTS_E3: case WTS_FUSED_IN: case WTS_FUSED_OUT:
    case WTS_GATE_UP: case WTS_GATE_UP_BIAS: case WTS_DOWN: case WTS_DOWN_BIAS:
        *box = reads_experts(c, p, t);
        break;
    case WTS_S1: case WTS_S2: case WTS_S3: case WTS_D1: case WTS_D2: case WTS_D3:
        *box = reads_mlp(p, t);
        break;
    default:
        *box = t->layer < 0 ? reads_ends(c, p, t) : reads_attn(c, p, t);
    }
    if (t->layer >= 0 && (t->layer < q->layer0 || t->layer >= q->layer1)) *box = box_none;
    if (wts_box_elems(box) == 0) *box = box_none;
}
