/* Mixtral (modeling_mixtral.py) with moemu's extensions: capacity factor,
 * shared experts, gelu experts (DESIGN.md, "Model semantics"). */
#include "engine/models/family.h"

/* Heads and shared experts split over TP; a rank's query heads must share
 * whole key/value heads, or one (Megatron-Core's rule for grouped-query
 * attention). */
static void mixtral_rules(const void *model, const par_strategy_t *s, moemu_problems_t *p)
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
}

static void mixtral_dims(const cfg_model_t *c, par_dims_t *m)
{
    *m = (par_dims_t){.layers = c->num_hidden_layers, .experts = c->num_local_experts,
                      .expert_ffn = c->intermediate_size, .rules = mixtral_rules, .model = c};
}

/* Key/value heads: Hkv/TP when TP divides Hkv, else those the rank's
 * query heads read (h / (H/Hkv), as repeat_kv maps them), replicated. */
static void place_kv(const cfg_model_t *c, const par_strategy_t *s, model_place_t *p)
{
    int H = c->num_attention_heads, Hkv = c->num_key_value_heads, h0 = p->dims.head0;
    if (Hkv % s->tp == 0) {
        par_split(Hkv, s->tp, p->par.tp, &p->dims.kv_head0, &p->kv_head1);
        return;
    }
    int group = H / Hkv;
    p->kv_replicated = true;
    p->dims.kv_head0 = h0 / group;
    p->kv_head1 = p->head1 > h0 ? (p->head1 - 1) / group + 1 : p->dims.kv_head0;
}

static void mixtral_place(const cfg_model_t *c, const par_strategy_t *s, int rank,
                          model_place_t *p)
{
    par_dims_t m;
    mixtral_dims(c, &m);
    *p = (model_place_t){0};
    par_layout_place(s, &m, rank, &p->par);
    layer_dims_t *dm = &p->dims;
    par_split(c->num_attention_heads, s->tp, p->par.tp, &dm->head0, &p->head1);
    place_kv(c, s, p);
    if (c->num_shared_experts > 0)
        par_split(c->shared_expert_intermediate_size, s->tp, p->par.tp, &p->shared_ffn0,
                  &p->shared_ffn1);
    layer_vocab_rows(c->vocab_size, s->tp, p->par.tp, &dm->vocab0, &p->vocab1);
    dm->d = c->hidden_size;
    dm->hd = c->head_dim;
    dm->H = c->num_attention_heads;
    dm->Hl = p->head1 - dm->head0;
    dm->kvl = p->kv_head1 - dm->kv_head0;
    dm->V = c->vocab_size;
    dm->Vl = p->vocab1 - dm->vocab0;
    dm->E = c->num_local_experts;
    dm->k = c->num_experts_per_tok;
    dm->mlp_f = p->shared_ffn1 - p->shared_ffn0;
    dm->eps = (float)c->rms_norm_eps;
    dm->rope_theta = c->rope_theta;
}

static double mixtral_held(const cfg_model_t *c, const model_place_t *p, double *layer_out,
                           double *head_out)
{
    const par_place_t *q = &p->par;
    double d = c->hidden_size, hd = c->head_dim, mats = c->hidden_act == LAYER_ACT_SILU ? 3 : 2;
    double layer = 2 * d + (p->head1 - p->dims.head0) * hd * d * 2 +
                   (p->kv_head1 - p->dims.kv_head0) * hd * d * 2 +
                   (double)c->num_local_experts * d +
                   (double)(q->expert1 - q->expert0) * mats * (q->ffn1 - q->ffn0) * d +
                   (double)c->num_shared_experts * mats * (p->shared_ffn1 - p->shared_ffn0) * d;
    double n = layer * (q->layer1 - q->layer0);
    double rows = (double)(p->vocab1 - p->dims.vocab0) * d;
    if (q->has_embed) n += rows;
    if (q->has_lm_head) n += d + (c->tie_word_embeddings && q->has_embed ? 0 : rows);
    if (layer_out) *layer_out = layer;
    if (head_out) *head_out = d + rows;
    return n * (double)emu_dtype_size(c->dtype);
}

static moemu_status_t mixtral_layer(const model_pass_t *mp)
{
    const cfg_model_t *c = &mp->w->cfg;
    const wts_layer_t *L = &mp->w->layers[mp->layer];
    const model_place_t *pl = mp->place;
    layer_view_t *v = mp->v;
    layer_attn_w_t aw = {.norm = L->attn_norm, .wq = L->wq, .wk = L->wk, .wv = L->wv,
                         .wo = L->wo};
    MOEMU_CHECK(layer_attention_block(v, &aw));
    layer_moe_route(v, L->moe_norm, L->gate);
    mp->chosen(mp);
    int64_t dropped;
    MOEMU_CHECK(layer_moe_capacity(v, c->capacity_factor, &dropped));
    mp->kept(mp, dropped);
    layer_experts_t ex = {.w1 = L->w1, .w3 = L->w3, .w2 = L->w2, .E = c->num_local_experts,
                          .k = c->num_experts_per_tok, .d = c->hidden_size,
                          .F = c->intermediate_size, .e0 = pl->par.expert0, .e1 = pl->par.expert1,
                          .f0 = pl->par.ffn0, .f1 = pl->par.ffn1, .act = c->hidden_act,
                          .load = mp->load};
    layer_mlp_t shared = {.w1 = L->sw1, .w3 = L->sw3, .w2 = L->sw2, .S = c->num_shared_experts,
                          .F = c->shared_expert_intermediate_size, .f0 = pl->shared_ffn0,
                          .f1 = pl->shared_ffn1, .act = c->hidden_act};
    return layer_moe_block(v, &ex, &shared);
}

const model_family_t family_mixtral = {
    .model_type = "mixtral",
    .config = cfg_read_mixtral,
    .dims = mixtral_dims,
    .tensor_count = wts_mixtral_tensor_count,
    .tensor_at = wts_mixtral_tensor_at,
    .place = mixtral_place,
    .figures = cfg_figures,
    .held = mixtral_held,
    .layer = mixtral_layer,
};
