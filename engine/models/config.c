/* Model configuration: built-in models, Hugging Face config.json parsing
 * (through jansson), the rules a usable config obeys and the figures derived
 * from it. docs/config.md is the reference for every key. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "engine/models/config.h"
#include "engine/models/family.h"

/* ---- Built-in models */

static const cfg_model_t cfg_builtins[] = {
    /* Small enough for fast tests, yet every path runs: grouped-query
     * attention (Hkv < H), head_dim given apart from d / H, top-2 of 8.
     * V = 97 is prime so that tensor parallelism never divides it; four
     * layers make room for four pipeline stages. */
    {.family = &family_mixtral,
     .name = "tiny",
     .vocab_size = 97,
     .hidden_size = 64,
     .intermediate_size = 96,
     .num_hidden_layers = 4,
     .num_attention_heads = 4,
     .num_key_value_heads = 2,
     .head_dim = 16,
     .num_local_experts = 8,
     .num_experts_per_tok = 2,
     .max_position_embeddings = 4096,
     .rms_norm_eps = 1e-5,
     .rope_theta = 10000.0,
     .capacity_factor = 0.0,
     .hidden_act = LAYER_ACT_SILU,
     .tie_word_embeddings = false,
     .dtype = EMU_DTYPE_FP16,
     .num_shared_experts = 0,
     .shared_expert_intermediate_size = 96,
     .embedding_multiplier = 1, .residual_multiplier = 1, .logits_scaling = 1},
    {.family = &family_mixtral,
     .name = "moe-10b-plan",
     .vocab_size = 32000,
     .hidden_size = 512,
     .intermediate_size = 1024,
     .num_hidden_layers = 16,
     .num_attention_heads = 16,
     .num_key_value_heads = 16,
     .head_dim = 32,
     .num_local_experts = 16,
     .num_experts_per_tok = 2,
     .max_position_embeddings = 16384,
     .rms_norm_eps = 1e-5,
     .rope_theta = 10000.0,
     .capacity_factor = 1.2,
     .hidden_act = LAYER_ACT_SILU,
     .tie_word_embeddings = false,
     .dtype = EMU_DTYPE_FP16,
     .num_shared_experts = 0,
     .shared_expert_intermediate_size = 1024,
     .embedding_multiplier = 1, .residual_multiplier = 1, .logits_scaling = 1},
    {.family = &family_mixtral,
     .name = "moe-30b-plan",
     .vocab_size = 32000,
     .hidden_size = 1024,
     .intermediate_size = 2048,
     .num_hidden_layers = 16,
     .num_attention_heads = 16,
     .num_key_value_heads = 16,
     .head_dim = 64,
     .num_local_experts = 64,
     .num_experts_per_tok = 1,
     .max_position_embeddings = 16384,
     .rms_norm_eps = 1e-5,
     .rope_theta = 10000.0,
     .capacity_factor = 1.1,
     .hidden_act = LAYER_ACT_SILU,
     .tie_word_embeddings = false,
     .dtype = EMU_DTYPE_FP16,
     .num_shared_experts = 0,
     .shared_expert_intermediate_size = 2048,
     .embedding_multiplier = 1, .residual_multiplier = 1, .logits_scaling = 1},
};

#define CFG_NBUILTIN (sizeof cfg_builtins / sizeof cfg_builtins[0])

const char *const cfg_builtin_names[] = {"tiny", "moe-10b-plan", "moe-30b-plan",
                                         NULL};

_Static_assert(sizeof cfg_builtin_names / sizeof cfg_builtin_names[0] ==
                   CFG_NBUILTIN + 1,
               "cfg_builtin_names must list every built-in model");

/* ---- Numbers in messages */

/* The shortest %g form that reads back as the same double, so that 1e-5
 * prints as 1e-05 and not 1.0000000000000001e-05; whole numbers in full. */
static void cfg_fmt_double(char *buf, size_t n, double v)
{
    if (v == floor(v) && fabs(v) < 1e15) { /* 50, not 5e+01 */
        snprintf(buf, n, "%.0f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

/* ---- Reading the JSON: emu_json's getters. An absent key or null (for an
 * optional key) leaves the default; integers may be written as whole
 * reals (4096.0), as some exporters do. */

#define CFG_OPT (EMU_JSON_NULLABLE | EMU_JSON_WHOLE_REAL)

typedef struct {
    emu_json_src_t js; /* origin: the file path or model name */
    json_t *root;
} cfg_src_t;

static bool cfg_present(const cfg_src_t *src, const char *key)
{
    json_t *v = json_object_get(src->root, key);
    return v && !json_is_null(v);
}

/* A required integer; Qwen and DeepSeek name their expert count
 * differently, so a missing num_local_experts points at it. */
static moemu_status_t cfg_required(const cfg_src_t *src, const char *key,
                                   int *out)
{
    static const char *const other[] = {"num_experts", "n_routed_experts"};
    bool experts = strcmp(key, "num_local_experts") == 0;
    for (size_t i = 0; i < 2 && experts; i++)
        if (!json_object_get(src->root, key) &&
            json_object_get(src->root, other[i]))
            return emu_json_bad(&src->js, key, NULL,
                                "is required but missing (this config has "
                                "'%s', which moemu does not read)",
                                other[i]);
    return emu_json_int(&src->js, src->root, key,
                        EMU_JSON_REQUIRED | EMU_JSON_WHOLE_REAL, INT_MIN,
                        INT_MAX, out);
}

static moemu_status_t cfg_int(const cfg_src_t *src, const char *key, int *out)
{
    return emu_json_int(&src->js, src->root, key, CFG_OPT, INT_MIN, INT_MAX,
                        out);
}

/* ---- Keys refused because they would change the semantics of
 * DESIGN.md. Each is accepted only at the value that means "as moemu does
 * anyway" (or when absent or null). */

typedef enum {
    CFG_REFUSE_NONNULL,  /* any value but null */
    CFG_REFUSE_TRUE,     /* true (a boolean) */
    CFG_REFUSE_FALSE,    /* false (a boolean) */
    CFG_REFUSE_NOT_ONE,  /* a number other than 1 */
    CFG_REFUSE_ABOVE,    /* an integer above .limit */
    CFG_REFUSE_NOT_STR,  /* a string other than .str */
    CFG_REFUSE_NONEMPTY, /* a non-empty array */
} cfg_refuse_kind_t;

typedef struct {
    const char *key;
    cfg_refuse_kind_t kind;
    int limit;
    const char *str;
    const char *why;
} cfg_refusal_t;

static const cfg_refusal_t cfg_refusals[] = {
    {"attention_bias", CFG_REFUSE_TRUE, 0, NULL,
     "attention projections have no biases in moemu"},
    {"mlp_bias", CFG_REFUSE_TRUE, 0, NULL,
     "expert projections have no biases in moemu"},
    {"norm_topk_prob", CFG_REFUSE_FALSE, 0, NULL,
     "moemu always renormalises the top-k routing weights"},
    {"partial_rotary_factor", CFG_REFUSE_NOT_ONE, 0, NULL,
     "moemu rotates the whole head (partial rotary is not supported)"},
    {"use_qk_norm", CFG_REFUSE_TRUE, 0, NULL,
     "query/key normalisation is not supported"},
    {"qk_layernorm", CFG_REFUSE_TRUE, 0, NULL,
     "query/key normalisation is not supported"},
    {"scoring_func", CFG_REFUSE_NOT_STR, 0, "softmax",
     "the router scores experts with softmax only"},
    {"topk_method", CFG_REFUSE_NOT_STR, 0, "greedy",
     "the router picks a plain (greedy) top-k only"},
    {"n_group", CFG_REFUSE_ABOVE, 1, NULL,
     "grouped routing is not supported (use 1)"},
    {"topk_group", CFG_REFUSE_ABOVE, 1, NULL,
     "grouped routing is not supported (use 1)"},
    {"routed_scaling_factor", CFG_REFUSE_NOT_ONE, 0, NULL,
     "routed expert outputs are not rescaled in moemu"},
    {"first_k_dense_replace", CFG_REFUSE_ABOVE, 0, NULL,
     "dense (non-MoE) layers are not supported; every layer is MoE"},
    {"moe_layer_freq", CFG_REFUSE_NOT_ONE, 0, NULL,
     "dense (non-MoE) layers are not supported; every layer is MoE"},
    {"decoder_sparse_step", CFG_REFUSE_NOT_ONE, 0, NULL,
     "dense (non-MoE) layers are not supported; every layer is MoE"},
    {"mlp_only_layers", CFG_REFUSE_NONEMPTY, 0, NULL,
     "dense (non-MoE) layers are not supported; every layer is MoE"},
    {"q_lora_rank", CFG_REFUSE_NONNULL, 0, NULL,
     "multi-head latent attention (MLA) is not supported"},
    {"kv_lora_rank", CFG_REFUSE_NONNULL, 0, NULL,
     "multi-head latent attention (MLA) is not supported"},
    {"rope_interleaved", CFG_REFUSE_TRUE, 0, NULL,
     "moemu uses the rotate-half (non-interleaved) RoPE convention"},
    {"use_sliding_window", CFG_REFUSE_TRUE, 0, NULL,
     "sliding-window attention is not supported"},
    {"attn_logit_softcapping", CFG_REFUSE_NONNULL, 0, NULL,
     "attention logit soft-capping is not supported"},
    {"final_logit_softcapping", CFG_REFUSE_NONNULL, 0, NULL,
     "final logit soft-capping is not supported"},
};

static moemu_status_t cfg_refused(const cfg_src_t *src, const char *key,
                                  const json_t *v, const char *why)
{
    char got[96];
    emu_json_describe(v, got, sizeof got);
    return emu_json_bad(&src->js, key, NULL, "= %s is not supported: %s", got,
                        why);
}

static moemu_status_t cfg_check_refusal(const cfg_src_t *src,
                                        const cfg_refusal_t *r)
{
    json_t *v = json_object_get(src->root, r->key);
    if (!cfg_present(src, r->key)) return MOEMU_OK;
    switch (r->kind) {
    case CFG_REFUSE_NONNULL: return cfg_refused(src, r->key, v, r->why);
    case CFG_REFUSE_TRUE:
    case CFG_REFUSE_FALSE: {
        bool b = false;
        MOEMU_CHECK(
            emu_json_bool(&src->js, src->root, r->key, CFG_OPT, &b));
        if (b == (r->kind == CFG_REFUSE_TRUE))
            return cfg_refused(src, r->key, v, r->why);
        return MOEMU_OK;
    }
    case CFG_REFUSE_NOT_ONE: {
        double x = 1.0;
        MOEMU_CHECK(
            emu_json_num(&src->js, src->root, r->key, CFG_OPT, &x));
        return x == 1.0 ? MOEMU_OK : cfg_refused(src, r->key, v, r->why);
    }
    case CFG_REFUSE_ABOVE: {
        int i = 0;
        MOEMU_CHECK(cfg_int(src, r->key, &i));
        return i <= r->limit ? MOEMU_OK : cfg_refused(src, r->key, v, r->why);
    }
    case CFG_REFUSE_NOT_STR: {
        const char *s = NULL;
        MOEMU_CHECK(
            emu_json_str(&src->js, src->root, r->key, CFG_OPT, &s));
        return strcmp(s, r->str) == 0 ? MOEMU_OK
                                      : cfg_refused(src, r->key, v, r->why);
    }
    case CFG_REFUSE_NONEMPTY:
        MOEMU_CHECK(
            emu_json_arr(&src->js, src->root, r->key, CFG_OPT, &v));
        return json_array_size(v) == 0 ? MOEMU_OK
                                       : cfg_refused(src, r->key, v, r->why);
    }
    return MOEMU_OK;
}

/* Qwen writes a window size together with use_sliding_window: false,
 * which switches it off; otherwise a window is a real restriction. */
static moemu_status_t cfg_check_sliding(const cfg_src_t *src)
{
    json_t *w = json_object_get(src->root, "sliding_window");
    json_t *use = json_object_get(src->root, "use_sliding_window");
    if (cfg_present(src, "sliding_window") && !json_is_false(use) && !json_is_true(use))
        return cfg_refused(src, "sliding_window", w,
                           "sliding-window attention is not supported; moemu "
                           "attends to the whole causal context (use null)");
    return MOEMU_OK;
}

/* ---- Figures with overflow detection */

typedef struct {
    bool overflow;
    const char *what; /* the first product or sum that overflowed */
} cfg_ck_t;

static int64_t cfg_mul(cfg_ck_t *ck, const char *what, int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r)) {
        if (!ck->overflow) ck->what = what;
        ck->overflow = true;
        return 0;
    }
    return r;
}

static int64_t cfg_add(cfg_ck_t *ck, const char *what, int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r)) {
        if (!ck->overflow) ck->what = what;
        ck->overflow = true;
        return 0;
    }
    return r;
}

/* The product of n sizes; what names the formula in the overflow message. */
static int64_t cfg_prod(cfg_ck_t *ck, const char *what, const int64_t *f, int n)
{
    int64_t r = 1;
    for (int i = 0; i < n; i++) r = cfg_mul(ck, what, r, f[i]);
    return r;
}

/* The sum of n counts; what names it in the overflow message. */
static int64_t cfg_sum(cfg_ck_t *ck, const char *what, const int64_t *f, int n)
{
    int64_t r = 0;
    for (int i = 0; i < n; i++) r = cfg_add(ck, what, r, f[i]);
    return r;
}

/* One MLA layer's attention parameters: the query's projections (q_proj,
 * or q_a_proj and q_b_proj), kv_a_proj_with_mqa, kv_b_proj and o_proj;
 * its two a-norms count as norms. */
static int64_t cfg_mla_params(cfg_ck_t *ck, const cfg_model_t *c)
{
    int64_t d = c->hidden_size, H = c->num_attention_heads, ql = c->q_lora_rank,
            lora = c->kv_lora_rank, rope = c->qk_rope_head_dim, nope = c->qk_nope_head_dim,
            vd = c->v_head_dim, qk = nope + rope;
    int64_t q = ql > 0 ? cfg_add(ck, "MLA query parameters", cfg_mul(ck, "q_lora_rank * hidden_size", ql, d),
                                 cfg_mul(ck, "heads * qk_head_dim * q_lora_rank", H * qk, ql))
                       : cfg_mul(ck, "heads * qk_head_dim * hidden_size", H * qk, d);
    int64_t kv = cfg_add(ck, "MLA key/value parameters",
                         cfg_mul(ck, "(kv_lora_rank + rope) * hidden_size", lora + rope, d),
                         cfg_mul(ck, "heads * (nope + v_head_dim) * kv_lora_rank", H * (nope + vd), lora));
    return cfg_add(ck, "MLA parameters", cfg_add(ck, "MLA parameters", q, kv),
                   cfg_mul(ck, "hidden_size * heads * v_head_dim", d, H * vd));
}

/* Computes every figure; returns false if a count overflows int64. */
static bool cfg_count(const cfg_model_t *c, cfg_figures_t *o, const char **what)
{
    cfg_ck_t ck = {false, NULL};
    const int64_t V = c->vocab_size, d = c->hidden_size,
                  F = c->intermediate_size, L = c->num_hidden_layers,
                  Lm = cfg_moe_layers(c), Ld = c->num_dense_layers,
                  H = c->num_attention_heads, Hkv = c->num_key_value_heads,
                  hd = c->head_dim, E = c->num_local_experts,
                  k = c->num_experts_per_tok, S = c->num_shared_experts,
                  Fs = c->shared_expert_intermediate_size,
                  Fd = c->dense_intermediate_size;
    /* SwiGLU MLPs have w1, w2, w3; GELU ones only w1, w2. */
    const int64_t mats = c->hidden_act == LAYER_ACT_GELU ? 2 : 3;
    memset(o, 0, sizeof *o);

#define P(name, ...)                                                           \
    cfg_prod(&ck, name, (const int64_t[]){__VA_ARGS__},                        \
             (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#define ADD(name, ...) cfg_sum(&ck, name, (const int64_t[]){__VA_ARGS__},     \
             (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
    int64_t vd = P("vocab_size * hidden_size", V, d);
    o->embedding = vd;
    /* q and o are (H*hd, d) and (d, H*hd); k and v are (Hkv*hd, d); the
     * biases of q, k, v and o where the family has them. */
    int64_t biases = ADD("attention biases", c->qkv_bias ? P("q, k and v biases", H + 2 * Hkv, hd) : 0,
                         c->o_bias ? d : 0);
    int64_t att_layer = ADD("attention parameters",
                            P("2 * hidden_size * num_attention_heads * head_dim", 2, d, H, hd),
                            P("2 * hidden_size * num_key_value_heads * head_dim", 2, d, Hkv, hd),
                            biases, c->sinks ? H : 0);
    if (c->kv_lora_rank > 0) att_layer = cfg_mla_params(&ck, c);
    o->attention = P("attention parameters * num_hidden_layers", att_layer, L);
    o->router = P("num_local_experts * (hidden_size + bias) * MoE layers", E,
                  d + (c->gate_bias || c->expert_bias ? 1 : 0), Lm);
    const bool gelu = mats == 2;
    /* gpt-oss's experts add their biases: 2F for gate and up, d for down */
    int64_t expert_w = P(gelu ? "2 * hidden_size * intermediate_size"
                              : "3 * hidden_size * intermediate_size", mats, d, F);
    int64_t expert = ADD("expert parameters", expert_w, c->expert_bias ? 2 * F + d : 0);
    o->experts = P(gelu ? "num_local_experts * 2 * hidden_size * intermediate_size * MoE layers"
                        : "num_local_experts * 3 * hidden_size * intermediate_size * MoE layers",
                   E, expert, Lm);
    int64_t routed_active = P("num_experts_per_tok * expert * MoE layers", k, expert, Lm);
    o->shared = ADD("shared expert parameters",
                    P("num_shared_experts * matrices * hidden_size * "
                      "shared_expert_intermediate_size * MoE layers", S, mats, d, Fs, Lm),
                    c->shared_gate ? P("shared expert gates", d, Lm) : 0);
    o->dense = P("matrices * hidden_size * dense intermediate_size * dense layers", mats, d, Fd,
                 Ld);
    int64_t qk = c->qk_norm == LAYER_QKNORM_HEAD    ? 2 * hd
                 : c->qk_norm == LAYER_QKNORM_WIDTH ? (H + Hkv) * hd
                                                    : 0;
    if (c->kv_lora_rank > 0) qk = (int64_t)c->q_lora_rank + c->kv_lora_rank; /* the a-norms */
    o->norms = ADD("norm parameters", P("norm parameters per layer * num_hidden_layers",
                                        2 * d + qk, L), d);
    o->lm_head = c->tie_word_embeddings ? 0 : vd;
    o->total = ADD("the total parameter count", o->embedding, o->attention, o->router, o->experts,
                   o->shared, o->dense, o->norms, o->lm_head);
    /* The output projection reads V*d weights per token whether or not it
     * is tied to the embedding; the embedding lookup reads one row. */
    int64_t matmul = ADD("the active parameter count", o->attention, o->router, routed_active,
                         o->shared, o->dense, vd);
    o->active_per_token = ADD("the active parameter count", matmul, o->norms);
    o->active_card = ADD("the active parameter count", o->active_per_token, o->lm_head ? vd : 0);
#undef P
#undef ADD

    /* an FP8 checkpoint keeps the embedding, lm_head, norms, biases (and
     * sinks), the router and the shared experts' gate in its dtype; an
     * MXFP4 one stores only the routed experts' weights so */
    double routed_w = (double)E * expert_w * Lm,
           kept = (double)o->embedding + (double)o->lm_head + (double)o->norms +
                  (double)o->router + (c->shared_gate ? (double)d * Lm : 0) +
                  (double)(biases + (c->sinks ? H : 0)) * L + (double)(o->experts - routed_w);
    o->weight_bytes = ((double)o->total - kept - routed_w) * cfg_weight_size(c) +
                      routed_w * cfg_expert_weight_size(c) + kept * (double)emu_dtype_size(c->dtype);
    o->flops_per_token = 2.0 * (double)matmul;
    /* MLA attends in the latent, rope + lora wide (values: the same rows) */
    double att_hd = c->kv_lora_rank > 0 ? (double)c->kv_lora_rank + c->qk_rope_head_dim : hd;
    o->attn_flops_per_pair = 4.0 * (double)H * att_hd * (double)L;
    if (what) *what = ck.what;
    return !ck.overflow;
}

void cfg_figures(const cfg_model_t *cfg, cfg_figures_t *out)
{
    cfg_count(cfg, out, NULL);
}

/* ---- Validation */

static void cfg_bad(moemu_problems_t *p, const char *key, const char *rule, double v)
{
    char got[40];
    cfg_fmt_double(got, sizeof got, v);
    moemu_problem(p, "config key '%s' must be %s, got %s", key, rule, got);
}

/* Sizes positive; the rules between sizes only when they are (they divide
 * by them). */
static void cfg_check_sizes(moemu_problems_t *p, const cfg_model_t *c)
{
    const struct {
        const char *key;
        int v;
    } sizes[] = {
        {"vocab_size", c->vocab_size},
        {"hidden_size", c->hidden_size},
        {"intermediate_size", c->intermediate_size},
        {"num_hidden_layers", c->num_hidden_layers},
        {"num_attention_heads", c->num_attention_heads},
        {"num_key_value_heads", c->num_key_value_heads},
        {"head_dim", c->head_dim},
        {"num_local_experts", c->num_local_experts},
        {"max_position_embeddings", c->max_position_embeddings},
    };
    int bad = p->n;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].v <= 0) cfg_bad(p, sizes[i].key, "positive", sizes[i].v);
    if (c->num_experts_per_tok < 1)
        cfg_bad(p, "num_experts_per_tok", "at least 1", c->num_experts_per_tok);
    if (p->n > bad) return;
    if (c->num_experts_per_tok > c->num_local_experts)
        moemu_problem(p, "config key 'num_experts_per_tok' = %d exceeds num_local_experts = %d",
                    c->num_experts_per_tok, c->num_local_experts);
    if (c->num_attention_heads % c->num_key_value_heads != 0)
        moemu_problem(p, "config key 'num_key_value_heads' = %d does not divide "
                       "num_attention_heads = %d",
                    c->num_key_value_heads, c->num_attention_heads);
    if (c->head_dim % 2 != 0)
        moemu_problem(p, "config key 'head_dim' must be even (RoPE rotates pairs of dimensions), "
                       "got %d", c->head_dim);
    /* Kernels take the projection widths as int. */
    if ((int64_t)c->num_attention_heads * c->head_dim > INT_MAX)
        moemu_problem(p, "config keys 'num_attention_heads' = %d times 'head_dim' = %d exceed %d",
                    c->num_attention_heads, c->head_dim, INT_MAX);
}

static void cfg_check_values(moemu_problems_t *p, const cfg_model_t *c)
{
    if (!(c->rms_norm_eps > 0) || !isfinite(c->rms_norm_eps))
        cfg_bad(p, "rms_norm_eps", "a finite number > 0", c->rms_norm_eps);
    if (!(c->rope_theta > 1) || !isfinite(c->rope_theta))
        cfg_bad(p, "rope_theta", "a finite number > 1", c->rope_theta);
    if (!(c->capacity_factor >= 0) || !isfinite(c->capacity_factor))
        cfg_bad(p, "capacity_factor", "a finite number >= 0 (0 = dropless)", c->capacity_factor);
    if (c->hidden_act != LAYER_ACT_SILU && c->hidden_act != LAYER_ACT_GELU &&
        (c->hidden_act != LAYER_ACT_SWIGLU_OAI || family_of(c) != &family_gpt_oss))
        cfg_bad(p, "hidden_act", "silu or gelu", c->hidden_act);
    if (c->dtype != EMU_DTYPE_FP16 && c->dtype != EMU_DTYPE_BF16 && c->dtype != EMU_DTYPE_FP32)
        moemu_problem(p, "config key 'dtype' must be fp16, bf16 or fp32, got %s",
                    (unsigned)c->dtype < EMU_DTYPE__COUNT ? emu_dtype_name(c->dtype)
                                                          : "an unknown dtype");
    if (c->num_shared_experts < 0)
        cfg_bad(p, "num_shared_experts", ">= 0", c->num_shared_experts);
    const struct {
        const char *key;
        double v;
    } mult[] = {{"embedding_multiplier", c->embedding_multiplier},
                {"residual_multiplier", c->residual_multiplier},
                {"logits_scaling", c->logits_scaling}};
    for (size_t i = 0; i < sizeof mult / sizeof mult[0]; i++)
        if (!isfinite(mult[i].v) || mult[i].v == 0) cfg_bad(p, mult[i].key, "finite and non-zero", mult[i].v);
    if (!(c->attention_multiplier >= 0) || !isfinite(c->attention_multiplier))
        cfg_bad(p, "attention_multiplier", "a finite number > 0", c->attention_multiplier);
    if (c->num_dense_layers > 0 && c->dense_intermediate_size <= 0)
        cfg_bad(p, "intermediate_size", "positive (the dense layers' MLP)", c->dense_intermediate_size);
    if (c->shared_expert_intermediate_size < 0 ||
        (c->num_shared_experts > 0 && c->shared_expert_intermediate_size == 0))
        cfg_bad(p, "shared_expert_intermediate_size", "positive when num_shared_experts > 0",
                c->shared_expert_intermediate_size);
}

/* Every rule on the values, into p. */
static void cfg_check(moemu_problems_t *p, const cfg_model_t *c)
{
    int before = p->n;
    cfg_check_sizes(p, c);
    cfg_check_values(p, c);
    if (p->n > before) return;
    cfg_figures_t f;
    const char *what = NULL;
    if (!cfg_count(c, &f, &what))
        moemu_problem(p, "config sizes are too large: %s overflows a 64-bit count (vocab_size = "
                         "%d, hidden_size = %d, intermediate_size = %d, num_hidden_layers = %d, "
                         "num_local_experts = %d)",
                      what, c->vocab_size, c->hidden_size, c->intermediate_size,
                      c->num_hidden_layers, c->num_local_experts);
}

moemu_status_t cfg_validate(const cfg_model_t *cfg)
{
    moemu_problems_t p = {.len = 0};
    cfg_check(&p, cfg);
    if (p.n)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: %s", cfg->name[0] ? cfg->name : "config", p.buf);
    return MOEMU_OK;
}

/* ---- Parsing */

/* "dir/mixtral.json" -> "mixtral". */
static void cfg_set_name(cfg_model_t *c, const char *label)
{
    const char *base = strrchr(label, '/');
    base = base ? base + 1 : label;
    size_t n = strlen(base);
    if (n > 5 && strcmp(base + n - 5, ".json") == 0) n -= 5;
    if (n == 0) {
        base = "config";
        n = 6;
    }
    if (n >= sizeof c->name) n = sizeof c->name - 1;
    memcpy(c->name, base, n);
    c->name[n] = '\0';
}

static moemu_status_t cfg_get_dtype(const cfg_src_t *src, emu_dtype_t *out)
{
    /* moemu's own key first; Hugging Face's torch_dtype otherwise. Newer
     * transformers write the torch spelling under "dtype" too. */
    static const char *const keys[] = {"dtype", "torch_dtype"};
    for (size_t i = 0; i < 2; i++) {
        const char *s = NULL;
        MOEMU_CHECK(
            emu_json_str(&src->js, src->root, keys[i], CFG_OPT, &s));
        if (!s) continue;
        if (!emu_dtype_parse(s, out) || *out == EMU_DTYPE_INT32 || *out == EMU_DTYPE_FP8)
            return emu_json_bad(&src->js, keys[i], NULL,
                                "= \"%.40s\" is not a supported dtype (fp16, "
                                "bf16, fp32, or float16, bfloat16, float32)%s",
                                s, *out == EMU_DTYPE_FP8 ? "; FP8 is a storage format of "
                                "the weights: --weight-dtype fp8 or an FP8 quantization_config" : "");
        return MOEMU_OK;
    }
    return MOEMU_OK;
}

static moemu_status_t cfg_get_act(const cfg_src_t *src, layer_act_t *out)
{
    const char *s = NULL;
    MOEMU_CHECK(
        emu_json_str(&src->js, src->root, "hidden_act", CFG_OPT, &s));
    if (!s) return MOEMU_OK;
    /* Hugging Face's "swish" is the same function as "silu"; its "gelu" is
     * the exact (erf) form. Approximations are refused, not substituted. */
    if (strcmp(s, "silu") == 0 || strcmp(s, "swish") == 0)
        *out = LAYER_ACT_SILU;
    else if (strcmp(s, "gelu") == 0)
        *out = LAYER_ACT_GELU;
    else
        return emu_json_bad(&src->js, "hidden_act", NULL,
                            "= \"%.40s\" is not supported (silu or gelu)", s);
    return MOEMU_OK;
}

/* ---- Reading a config: every key a family reads goes through a reader
 * that marks it seen and collects each problem, so that a config's
 * problems are all reported at once, one per line; keys nobody read are
 * named in one warning. */

typedef struct {
    cfg_src_t src;
    const char *label;
    moemu_problems_t p;
    moemu_status_t st; /* the first problem's status */
    json_t *seen;      /* the keys read, as an object used as a set */
} cfg_rd_t;

/* The problem in moemu's last message, without the label it starts with. */
static void rd_note(cfg_rd_t *r, moemu_status_t st)
{
    if (st == MOEMU_OK) return;
    const char *m = moemu_errmsg();
    size_t n = strlen(r->label);
    if (strncmp(m, r->label, n) == 0 && m[n] == ':' && m[n + 1] == ' ') m += n + 2;
    moemu_problem(&r->p, "%s", m);
    if (r->st == MOEMU_OK) r->st = st;
}

__attribute__((format(printf, 2, 3))) static void rd_bad(cfg_rd_t *r, const char *fmt, ...)
{
    char m[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    moemu_problem(&r->p, "%s", m);
    if (r->st == MOEMU_OK) r->st = MOEMU_ERR_INVALID;
}

static bool rd_has(cfg_rd_t *r, const char *key)
{
    json_object_set(r->seen, key, json_null());
    return cfg_present(&r->src, key);
}

static void rd_int(cfg_rd_t *r, const char *key, int *out)
{
    rd_has(r, key);
    rd_note(r, cfg_int(&r->src, key, out));
}

static void rd_num(cfg_rd_t *r, const char *key, double *out)
{
    rd_has(r, key);
    rd_note(r, emu_json_num(&r->src.js, r->src.root, key, CFG_OPT, out));
}

static void rd_bool(cfg_rd_t *r, const char *key, bool *out)
{
    rd_has(r, key);
    rd_note(r, emu_json_bool(&r->src.js, r->src.root, key, CFG_OPT, out));
}

static void rd_known(cfg_rd_t *r, const char *const *keys)
{
    for (; *keys; keys++) rd_has(r, *keys);
}

static void rd_refusals(cfg_rd_t *r, const cfg_refusal_t *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        rd_has(r, t[i].key);
        rd_note(r, cfg_check_refusal(&r->src, &t[i]));
    }
}

/* Keys of no effect on inference, in any family's config (Hugging Face's
 * PretrainedConfig bookkeeping, training-only settings). */
static const char *const cfg_bookkeeping[] = {
    "model_type", "architectures", "transformers_version", "_name_or_path", "auto_map",
    "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range",
    "attention_dropout", "output_router_logits", "router_aux_loss_coef", "router_jitter_noise",
    "tokenizer_class", "return_dict", "output_attentions", "output_hidden_states",
    "use_bfloat16", "torchscript", "is_decoder", "is_encoder_decoder", "add_cross_attention",
    "tie_encoder_decoder", "chunk_size_feed_forward", "pruned_heads", "id2label", "label2id",
    "problem_type", "prefix", "task_specific_params", "name", "comment", NULL};

/* Edits (insert, delete, substitute, swap two neighbours) from a to b,
 * case aside; keys longer than 63 characters are not compared. */
static int key_distance(const char *a, const char *b)
{
    int n = (int)strlen(a), m = (int)strlen(b), d[64][64];
    if (n > 63 || m > 63) return INT_MAX;
    for (int i = 0; i <= n; i++)
        for (int j = 0; j <= m; j++) {
            if (!i || !j) {
                d[i][j] = i + j;
                continue;
            }
            int sub = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            int best = d[i - 1][j - 1] + sub;
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[n][m];
}

/* The key the family reads that key most likely misspells, or NULL: at
 * most a third of its length in edits, and 3. */
static const char *rd_nearest(const cfg_rd_t *r, const char *key)
{
    int len = (int)strlen(key), lim = len / 3 < 3 ? len / 3 : 3, best = lim + 1;
    const char *near = NULL, *k;
    json_t *v;
    json_object_foreach(r->seen, k, v)
    {
        int dist = key_distance(key, k);
        if (dist < best) best = dist, near = k;
    }
    return near;
}

/* The keys the family does not read, each with the key it may misspell,
 * into list; returns their number. */
static int rd_unread(const cfg_rd_t *r, char *list, size_t cap)
{
    size_t len = 0;
    int n = 0;
    const char *key;
    json_t *v;
    list[0] = '\0';
    json_object_foreach(r->src.root, key, v)
    {
        if (json_object_get(r->seen, key)) continue;
        const char *near = rd_nearest(r, key);
        if (n++ < 12 && len < cap)
            len += (size_t)snprintf(list + len, cap - len, "%s'%.60s'%s%s%s", n > 1 ? ", " : "",
                                    key, near ? " (did you mean '" : "", near ? near : "",
                                    near ? "'?)" : "");
    }
    if (n > 12 && len < cap) snprintf(list + len, cap - len, " and %d more", n - 12);
    return n;
}

static void rd_dtype(cfg_rd_t *r, emu_dtype_t *out)
{
    rd_has(r, "dtype");
    rd_has(r, "torch_dtype");
    rd_note(r, cfg_get_dtype(&r->src, out));
}

static void rd_act(cfg_rd_t *r, layer_act_t *out)
{
    rd_has(r, "hidden_act");
    rd_note(r, cfg_get_act(&r->src, out));
}

/* RoPE: rope_theta, or transformers 5's rope_parameters; a scaling of
 * any kind but "default" is refused by name. */
/* YaRN's parameters from obj (rope_scaling or rope_parameters), as
 * transformers' _compute_yarn_parameters reads them: factor as given,
 * original_max_position_embeddings (else max_position_embeddings),
 * beta_fast 32, beta_slow 1, mscale, mscale_all_dim, truncate true,
 * attention_factor. */
static void rd_yarn(cfg_rd_t *r, const char *key, json_t *obj, cfg_model_t *c)
{
    char buf[64];
    emu_json_src_t in = emu_json_in(&r->src.js, key, buf, sizeof buf);
    c->yarn_original_max = c->max_position_embeddings;
    c->yarn_beta_fast = 32;
    c->yarn_beta_slow = 1;
    c->yarn_truncate = true;
    moemu_status_t st = emu_json_num(&in, obj, "factor", EMU_JSON_REQUIRED, &c->yarn_factor);
    rd_note(r, st);
    if (st != MOEMU_OK) return; /* the one problem: no factor */
    rd_note(r, emu_json_num(&in, obj, "original_max_position_embeddings", CFG_OPT,
                            &c->yarn_original_max));
    rd_note(r, emu_json_num(&in, obj, "beta_fast", CFG_OPT, &c->yarn_beta_fast));
    rd_note(r, emu_json_num(&in, obj, "beta_slow", CFG_OPT, &c->yarn_beta_slow));
    rd_note(r, emu_json_num(&in, obj, "mscale", CFG_OPT, &c->yarn_mscale));
    rd_note(r, emu_json_num(&in, obj, "mscale_all_dim", CFG_OPT, &c->yarn_mscale_all_dim));
    rd_note(r, emu_json_num(&in, obj, "attention_factor", CFG_OPT, &c->yarn_attention_factor));
    rd_note(r, emu_json_bool(&in, obj, "truncate", CFG_OPT, &c->yarn_truncate));
    if (!(c->yarn_factor >= 1) || !isfinite(c->yarn_factor) || !(c->yarn_original_max >= 1) ||
        !(c->yarn_beta_fast > 0) || !(c->yarn_beta_slow > 0) || c->yarn_mscale < 0 ||
        c->yarn_mscale_all_dim < 0 || c->yarn_attention_factor < 0)
        rd_bad(r, "config key '%s': YaRN needs factor >= 1, original_max_position_embeddings "
                  ">= 1, beta_fast and beta_slow > 0 and no negative mscale (got factor %g, "
                  "original %g, beta_fast %g, beta_slow %g, mscale %g, mscale_all_dim %g)",
               key, c->yarn_factor, c->yarn_original_max, c->yarn_beta_fast, c->yarn_beta_slow,
               c->yarn_mscale, c->yarn_mscale_all_dim);
}

/* One RoPE object: "default", "yarn" (read), or refused by name. */
static void rd_rope_type(cfg_rd_t *r, const char *key, json_t *obj, bool typeless_default,
                         cfg_model_t *c)
{
    if (!obj || json_is_null(obj)) return;
    json_t *t = json_object_get(obj, "rope_type");
    if (!t) t = json_object_get(obj, "type");
    if (!t && typeless_default) return; /* transformers 5 fills in "default" */
    const char *type = json_is_string(t) ? json_string_value(t) : "";
    if (strcmp(type, "default") == 0) return;
    if (strcmp(type, "yarn") == 0) {
        rd_yarn(r, key, obj, c);
        return;
    }
    char got[96];
    emu_json_describe(obj, got, sizeof got);
    rd_bad(r, "config key '%s' = %s is not supported: moemu applies plain RoPE or YaRN "
              "(rope_type \"default\" or \"yarn\"; linear, dynamic, longrope and llama3 "
              "scaling are not implemented)",
           key, got);
}

static void rd_rope(cfg_rd_t *r, cfg_model_t *c)
{
    double *theta = &c->rope_theta;
    rd_num(r, "rope_theta", theta);
    rd_has(r, "rope_scaling");
    rd_rope_type(r, "rope_scaling", json_object_get(r->src.root, "rope_scaling"), false, c);
    if (!rd_has(r, "rope_parameters")) return;
    json_t *rp = json_object_get(r->src.root, "rope_parameters");
    if (!json_is_object(rp)) {
        rd_bad(r, "config key 'rope_parameters' must be an object");
        return;
    }
    rd_rope_type(r, "rope_parameters", rp, true, c);
    double t = *theta;
    char buf[64];
    emu_json_src_t in = emu_json_in(&r->src.js, "rope_parameters", buf, sizeof buf);
    rd_note(r, emu_json_num(&in, rp, "rope_theta", CFG_OPT, &t));
    if (cfg_present(&r->src, "rope_theta") && t != *theta)
        rd_bad(r, "config keys 'rope_theta' = %g and 'rope_parameters.rope_theta' = %g disagree",
               *theta, t);
    *theta = t;
}

/* Values that are valid but no real model has (a capacity factor of 1e9,
 * an eps of 1e30): one warning naming each with the range expected. */
static moemu_status_t cfg_plausible(const cfg_model_t *c, const char *label)
{
    const struct {
        const char *key;
        double v, lo, hi;
        bool skip; /* 0 means unset */
    } t[] = {
        {"rms_norm_eps", c->rms_norm_eps, 1e-12, 1e-2, false},
        {"rope_theta", c->rope_theta, 100, 1e10, false},
        {"capacity_factor", c->capacity_factor, 0.1, 100, c->capacity_factor == 0},
        {"routed_scaling_factor", c->routed_scaling_factor, 1e-2, 100,
         c->router != LAYER_ROUTE_GROUPED},
        {"rope_scaling.factor", c->yarn_factor, 1, 1e4, c->yarn_factor == 0},
    };
    char list[1024] = "";
    size_t len = 0;
    int n = 0;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!t[i].skip && !(t[i].v >= t[i].lo && t[i].v <= t[i].hi) && len < sizeof list)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s %g (expected %g to %g)",
                                    n++ ? ", " : "", t[i].key, t[i].v, t[i].lo, t[i].hi);
    if (!n) return MOEMU_OK;
    return moemu_warn("%s: implausible value%s, read as given: %s", label, n == 1 ? "" : "s",
                      list);
}

/* The problems collected, then the rules on the values read. */
static moemu_status_t rd_finish(cfg_rd_t *r, cfg_model_t *c, cfg_model_t *out)
{
    cfg_check(&r->p, c); /* a key that could not be read kept its valid default */
    char list[1536];
    int unread = rd_unread(r, list, sizeof list);
    if (r->p.n && unread) /* a misspelt key is often why one is missing */
        moemu_problem(&r->p, "%d config key%s that moemu does not read: %s", unread,
                      unread == 1 ? "" : "s", list);
    if (r->p.n) {
        moemu_status_t st = r->st != MOEMU_OK ? r->st : MOEMU_ERR_INVALID;
        if (r->p.n == 1) return moemu_fail(st, "%s: %s", r->label, r->p.buf + 3);
        return moemu_fail_problems(st, &r->p, "%s: %d problems in the config:", r->label, r->p.n);
    }
    if (unread)
        MOEMU_CHECK(moemu_warn("%s: %d config key%s that moemu does not read (ignored): %s",
                               r->label, unread, unread == 1 ? "" : "s", list));
    MOEMU_CHECK(cfg_plausible(c, r->label));
    *out = *c;
    return MOEMU_OK;
}

static moemu_status_t rd_run(cfg_model_t *out, json_t *root, const char *label,
                             void (*read)(cfg_rd_t *r, cfg_model_t *c), const cfg_model_t *base)
{
    cfg_rd_t r = {.src = {{.origin = label, .noun = "config key"}, root}, .label = label,
                  .p = {.lines = true}, .seen = json_object()};
    if (!r.seen) return moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory", label);
    cfg_model_t c = *base;
    cfg_set_name(&c, label);
    rd_known(&r, cfg_bookkeeping);
    read(&r, &c);
    moemu_status_t st = rd_finish(&r, &c, out);
    json_decref(r.seen);
    return st;
}

/* ---- Mixtral and moemu's own format */

/* A required integer; Qwen and DeepSeek name their expert count
 * differently, so a missing num_local_experts points at it. */
static void rd_required(cfg_rd_t *r, const char *key, int *out)
{
    rd_has(r, key);
    rd_note(r, cfg_required(&r->src, key, out));
}

/* head_dim given, or d / H when exact. */
static void rd_head_dim(cfg_rd_t *r, cfg_model_t *c)
{
    rd_int(r, "head_dim", &c->head_dim);
    if (cfg_present(&r->src, "head_dim") || c->hidden_size <= 0 || c->num_attention_heads <= 0)
        return;
    if (c->hidden_size % c->num_attention_heads != 0)
        rd_bad(r, "config key 'head_dim' is not given and hidden_size = %d is not divisible by "
                  "num_attention_heads = %d; give head_dim",
               c->hidden_size, c->num_attention_heads);
    else
        c->head_dim = c->hidden_size / c->num_attention_heads;
}

/* quantization_config: transformers' fine-grained FP8 (DeepSeek-V3, the
 * Qwen3 FP8 releases): e4m3 weights with a scale per weight_block_size
 * block, dequantized at load; any other method is refused. */
static void rd_quant(cfg_rd_t *r, cfg_model_t *c)
{
    if (!rd_has(r, "quantization_config")) return;
    json_t *q = json_object_get(r->src.root, "quantization_config"), *bs;
    const char *method = json_is_object(q) ? json_string_value(json_object_get(q, "quant_method"))
                                           : NULL;
    /* gpt-oss's MXFP4 experts (the rest, modules_to_not_convert, in the
     * dtype) */
    if (method && !strcmp(method, "mxfp4") && family_of(c) == &family_gpt_oss) {
        c->mxfp4 = true;
        return;
    }
    const char *fmt = json_string_value(json_object_get(q, "fmt"));
    bs = json_object_get(q, "weight_block_size");
    c->fp8_block_r = c->fp8_block_c = 128;
    if (json_is_array(bs)) {
        bool two = json_array_size(bs) == 2;
        c->fp8_block_r = two ? (int)json_integer_value(json_array_get(bs, 0)) : 0;
        c->fp8_block_c = two ? (int)json_integer_value(json_array_get(bs, 1)) : 0;
    }
    if (!method || strcmp(method, "fp8") != 0 || (fmt && strcmp(fmt, "e4m3") != 0) ||
        (bs && !json_is_null(bs) && !json_is_array(bs)) || c->fp8_block_r < 1 ||
        c->fp8_block_c < 1) {
        char got[96];
        emu_json_describe(q, got, sizeof got);
        rd_bad(r, "config key 'quantization_config' = %s is not supported: moemu loads "
                  "fine-grained FP8 checkpoints (quant_method \"fp8\", fmt \"e4m3\", a "
                  "weight_block_size of two positive sizes), no other quantization",
               got);
        c->fp8_block_r = c->fp8_block_c = 0;
    }
}

static void read_mixtral(cfg_rd_t *r, cfg_model_t *c)
{
    rd_refusals(r, cfg_refusals, sizeof cfg_refusals / sizeof cfg_refusals[0]);
    rd_has(r, "sliding_window");
    rd_has(r, "use_sliding_window");
    rd_note(r, cfg_check_sliding(&r->src));
    static const struct {
        const char *key;
        size_t off;
    } required[] = {
        {"vocab_size", offsetof(cfg_model_t, vocab_size)},
        {"hidden_size", offsetof(cfg_model_t, hidden_size)},
        {"intermediate_size", offsetof(cfg_model_t, intermediate_size)},
        {"num_hidden_layers", offsetof(cfg_model_t, num_hidden_layers)},
        {"num_attention_heads", offsetof(cfg_model_t, num_attention_heads)},
        {"num_local_experts", offsetof(cfg_model_t, num_local_experts)},
        {"num_experts_per_tok", offsetof(cfg_model_t, num_experts_per_tok)},
    };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        rd_required(r, required[i].key, (int *)((char *)c + required[i].off));
    c->num_key_value_heads = c->num_attention_heads;
    rd_int(r, "num_key_value_heads", &c->num_key_value_heads);
    rd_head_dim(r, c);
    rd_int(r, "max_position_embeddings", &c->max_position_embeddings);
    rd_num(r, "rms_norm_eps", &c->rms_norm_eps);
    rd_rope(r, c);
    rd_num(r, "capacity_factor", &c->capacity_factor);
    rd_act(r, &c->hidden_act);
    rd_bool(r, "tie_word_embeddings", &c->tie_word_embeddings);
    rd_dtype(r, &c->dtype);
    rd_quant(r, c);
    rd_int(r, "num_shared_experts", &c->num_shared_experts);
    c->shared_expert_intermediate_size = c->intermediate_size;
    rd_int(r, "shared_expert_intermediate_size", &c->shared_expert_intermediate_size);
    /* a Qwen2-MoE config without its model_type would lose its shared
     * expert without a word */
    if (cfg_present(&r->src, "shared_expert_intermediate_size") &&
        c->shared_expert_intermediate_size > 0 && !cfg_present(&r->src, "num_shared_experts"))
        rd_bad(r, "config key 'shared_expert_intermediate_size' is given without "
                  "num_shared_experts, which would build no shared expert: give "
                  "num_shared_experts (or model_type \"qwen2_moe\" for a Qwen2-MoE config)");
    /* Qwen/DeepSeek keep the routed expert size in moe_intermediate_size
     * and a dense MLP size in intermediate_size: reading the latter would
     * silently build a different model. */
    int moe_f = c->intermediate_size;
    rd_int(r, "moe_intermediate_size", &moe_f);
    if (moe_f != c->intermediate_size)
        rd_bad(r, "config key 'moe_intermediate_size' = %d differs from intermediate_size = %d; "
                  "moemu reads the routed expert size from intermediate_size (give model_type "
                  "for a Qwen or DeepSeek config)",
               moe_f, c->intermediate_size);
}

static const cfg_model_t cfg_mixtral_base = {
    .family = &family_mixtral, .max_position_embeddings = 32768, .rms_norm_eps = 1e-5,
    .rope_theta = 1e6, .hidden_act = LAYER_ACT_SILU, .dtype = EMU_DTYPE_FP16,
    .embedding_multiplier = 1, .residual_multiplier = 1, .logits_scaling = 1};

moemu_status_t cfg_read_mixtral(cfg_model_t *out, json_t *root, const char *label)
{
    return rd_run(out, root, label, read_mixtral, &cfg_mixtral_base);
}

/* ---- The Hugging Face families (modeling_<model_type>.py): a key absent
 * from the file takes the default of the family's configuration class. */

/* Keys every family below reads the same way. */
static void rd_hf_common(cfg_rd_t *r, cfg_model_t *c, const char *experts_key,
                         const char *expert_f_key)
{
    rd_int(r, "vocab_size", &c->vocab_size);
    rd_int(r, "hidden_size", &c->hidden_size);
    rd_int(r, "num_hidden_layers", &c->num_hidden_layers);
    rd_int(r, "num_attention_heads", &c->num_attention_heads);
    if (!c->num_key_value_heads) /* the class's None: as many as query heads */
        c->num_key_value_heads = c->num_attention_heads;
    rd_int(r, "num_key_value_heads", &c->num_key_value_heads);
    rd_int(r, experts_key, &c->num_local_experts);
    rd_int(r, "num_experts_per_tok", &c->num_experts_per_tok);
    rd_int(r, expert_f_key, &c->intermediate_size);
    rd_int(r, "max_position_embeddings", &c->max_position_embeddings);
    rd_num(r, "rms_norm_eps", &c->rms_norm_eps);
    rd_rope(r, c);
    rd_bool(r, "tie_word_embeddings", &c->tie_word_embeddings);
    rd_dtype(r, &c->dtype);
    rd_num(r, "capacity_factor", &c->capacity_factor);
    /* The experts are gated (act(gate) * up) whatever the activation. */
    rd_act(r, &c->hidden_act);
    if (c->hidden_act != LAYER_ACT_SILU)
        rd_bad(r, "config key 'hidden_act' must be silu for model_type %s (its experts are "
                  "gated; moemu's two-matrix gelu experts are another function)",
               family_of(c)->model_type);
    static const cfg_refusal_t refused[] = {
        {"partial_rotary_factor", CFG_REFUSE_NOT_ONE, 0, NULL,
         "moemu rotates the whole head (partial rotary is not supported)"},
    };
    rd_refusals(r, refused, sizeof refused / sizeof refused[0]);
    rd_quant(r, c);
}

/* head_dim is hidden_size / num_attention_heads in these families; a
 * config whose head_dim says otherwise is ambiguous. */
static void rd_head_dim_fixed(cfg_rd_t *r, cfg_model_t *c)
{
    if (c->hidden_size <= 0 || c->num_attention_heads <= 0) return;
    if (c->hidden_size % c->num_attention_heads != 0)
        rd_bad(r, "config key 'hidden_size' = %d is not divisible by num_attention_heads = %d "
                  "(the head size of model_type %s)",
               c->hidden_size, c->num_attention_heads, family_of(c)->model_type);
    c->head_dim = c->hidden_size / c->num_attention_heads;
    int given = c->head_dim;
    rd_int(r, "head_dim", &given);
    if (given != c->head_dim)
        rd_bad(r, "config key 'head_dim' = %d is ambiguous: model_type %s computes the head "
                  "size as hidden_size / num_attention_heads = %d",
               given, family_of(c)->model_type, c->head_dim);
}

/* Qwen's sliding window: off unless use_sliding_window (transformers 5's
 * layer_types says the same per layer). */
static void rd_qwen_window(cfg_rd_t *r)
{
    bool use = false;
    rd_bool(r, "use_sliding_window", &use);
    rd_has(r, "sliding_window");
    rd_has(r, "max_window_layers");
    if (use)
        rd_bad(r, "config key 'use_sliding_window' = true is not supported: sliding-window "
                  "attention is not implemented");
    if (!rd_has(r, "layer_types")) return;
    json_t *lt = NULL, *v;
    rd_note(r, emu_json_arr(&r->src.js, r->src.root, "layer_types", CFG_OPT, &lt));
    size_t i;
    json_array_foreach(lt, i, v) if (!json_is_string(v) ||
                                     strcmp(json_string_value(v), "full_attention") != 0)
    {
        rd_bad(r, "config key 'layer_types[%zu]' is not \"full_attention\": sliding-window "
                  "attention is not implemented", i);
        return;
    }
}

/* Qwen's dense layers: layer l is MoE unless it is in mlp_only_layers or
 * (l + 1) % decoder_sparse_step != 0; a dense layer's MLP has
 * intermediate_size. */
/* Layer l's MLP is dense (l < CFG_MAX_LAYERS). */
static void cfg_set_dense(cfg_model_t *c, int l) { c->dense[l / 8] |= (uint8_t)(1u << (l % 8)); }

/* The dense layers marked, counted; a model with some may have no more
 * layers than the bits hold. */
static void rd_dense_count(cfg_rd_t *r, cfg_model_t *c)
{
    int L = c->num_hidden_layers;
    c->num_dense_layers = 0;
    for (int l = 0; l < L && l < CFG_MAX_LAYERS; l++) c->num_dense_layers += c->dense[l / 8] >> (l % 8) & 1;
    if (c->num_dense_layers > 0 && L > CFG_MAX_LAYERS)
        rd_bad(r, "config key 'num_hidden_layers' = %d exceeds %d, the most moemu supports with "
                  "dense layers", L, CFG_MAX_LAYERS);
}

static void rd_qwen_dense(cfg_rd_t *r, cfg_model_t *c)
{
    int step = 1;
    rd_int(r, "decoder_sparse_step", &step);
    rd_int(r, "intermediate_size", &c->dense_intermediate_size);
    if (step < 1) {
        rd_bad(r, "config key 'decoder_sparse_step' must be at least 1, got %d", step);
        return;
    }
    int L = c->num_hidden_layers;
    memset(c->dense, 0, sizeof c->dense);
    for (int l = 0; l < L && l < CFG_MAX_LAYERS; l++)
        if ((l + 1) % step != 0) cfg_set_dense(c, l);
    json_t *only = NULL, *v;
    rd_has(r, "mlp_only_layers");
    rd_note(r, emu_json_arr(&r->src.js, r->src.root, "mlp_only_layers", CFG_OPT, &only));
    size_t i;
    json_array_foreach(only, i, v)
    {
        json_int_t l = json_is_integer(v) ? json_integer_value(v) : -1;
        if (l < 0 || l >= L)
            rd_bad(r, "config key 'mlp_only_layers[%zu]' must be a layer index in [0, %d)", i, L);
        else if (l < CFG_MAX_LAYERS)
            cfg_set_dense(c, (int)l);
    }
    rd_dense_count(r, c);
}

static void rd_norm_topk(cfg_rd_t *r, cfg_model_t *c)
{
    bool norm = false;
    rd_bool(r, "norm_topk_prob", &norm);
    c->router = norm ? LAYER_ROUTE_SOFTMAX_TOPK_NORM : LAYER_ROUTE_SOFTMAX_TOPK;
}

static void read_qwen2_moe(cfg_rd_t *r, cfg_model_t *c)
{
    rd_hf_common(r, c, "num_experts", "moe_intermediate_size");
    rd_head_dim_fixed(r, c);
    rd_bool(r, "qkv_bias", &c->qkv_bias);
    rd_int(r, "shared_expert_intermediate_size", &c->shared_expert_intermediate_size);
    if (c->shared_expert_intermediate_size <= 0)
        rd_bad(r, "config key 'shared_expert_intermediate_size' must be positive (Qwen2-MoE always "
                  "has its gated shared expert), got %d", c->shared_expert_intermediate_size);
    c->num_shared_experts = 1;
    c->shared_gate = true;
    rd_norm_topk(r, c);
    rd_qwen_window(r);
    rd_qwen_dense(r, c);
}

/* attention_bias: biases on q, k, v and o alike. */
static void rd_attention_bias(cfg_rd_t *r, cfg_model_t *c)
{
    rd_bool(r, "attention_bias", &c->qkv_bias);
    c->o_bias = c->qkv_bias;
}

static void read_qwen3_moe(cfg_rd_t *r, cfg_model_t *c)
{
    rd_hf_common(r, c, "num_experts", "moe_intermediate_size");
    rd_head_dim(r, c);
    rd_attention_bias(r, c);
    rd_norm_topk(r, c);
    rd_qwen_window(r);
    rd_qwen_dense(r, c);
}

static void read_olmoe(cfg_rd_t *r, cfg_model_t *c)
{
    /* OlmoeConfig maps num_local_experts onto num_experts */
    rd_int(r, "num_local_experts", &c->num_local_experts);
    rd_hf_common(r, c, "num_experts", "intermediate_size");
    rd_head_dim_fixed(r, c);
    rd_attention_bias(r, c);
    rd_num(r, "clip_qkv", &c->clip_qkv);
    if (cfg_present(&r->src, "clip_qkv") && (!(c->clip_qkv > 0) || !isfinite(c->clip_qkv)))
        rd_bad(r, "config key 'clip_qkv' must be null or a finite number > 0, got %g", c->clip_qkv);
    rd_norm_topk(r, c);
}

static void read_granitemoe(cfg_rd_t *r, cfg_model_t *c)
{
    rd_hf_common(r, c, "num_local_experts", "intermediate_size");
    rd_head_dim_fixed(r, c);
    rd_attention_bias(r, c);
    rd_num(r, "embedding_multiplier", &c->embedding_multiplier);
    rd_num(r, "residual_multiplier", &c->residual_multiplier);
    rd_num(r, "attention_multiplier", &c->attention_multiplier);
    rd_num(r, "logits_scaling", &c->logits_scaling);
    const char *pe = NULL; /* the class hard-codes rope */
    rd_has(r, "position_embedding_type");
    rd_note(r, emu_json_str(&r->src.js, r->src.root, "position_embedding_type", CFG_OPT, &pe));
    if (pe && strcmp(pe, "rope") != 0)
        rd_bad(r, "config key 'position_embedding_type' = \"%.40s\" is not supported (rope)", pe);
    if (!(c->attention_multiplier > 0))
        rd_bad(r, "config key 'attention_multiplier' must be > 0, got %g", c->attention_multiplier);
}

/* ---- DeepSeek-V2 and V3 (modeling_deepseek_v2.py, modeling_deepseek_v3.py;
 * kimi_k2 is V3's architecture) */

/* Layer l is MoE when l >= first_k_dense_replace and l % moe_layer_freq
 * == 0; the others are dense MLPs of intermediate_size. */
static void rd_deepseek_dense(cfg_rd_t *r, cfg_model_t *c, bool v3)
{
    int first = v3 ? 3 : 0, freq = 1, L = c->num_hidden_layers;
    rd_int(r, "first_k_dense_replace", &first);
    rd_int(r, "moe_layer_freq", &freq);
    rd_int(r, "intermediate_size", &c->dense_intermediate_size);
    if (freq < 1) {
        rd_bad(r, "config key 'moe_layer_freq' must be at least 1, got %d", freq);
        return;
    }
    memset(c->dense, 0, sizeof c->dense);
    for (int l = 0; l < L && l < CFG_MAX_LAYERS; l++)
        if (l < first || l % freq != 0) cfg_set_dense(c, l);
    rd_dense_count(r, c);
}

/* scoring_func, topk_method, groups, norm_topk_prob, routed_scaling_factor. */
static void rd_deepseek_router(cfg_rd_t *r, cfg_model_t *c, bool v3)
{
    const char *score = v3 ? "sigmoid" : "softmax", *method = v3 ? "noaux_tc" : "greedy";
    rd_has(r, "scoring_func");
    rd_note(r, emu_json_str(&r->src.js, r->src.root, "scoring_func", CFG_OPT, &score));
    rd_has(r, "topk_method");
    rd_note(r, emu_json_str(&r->src.js, r->src.root, "topk_method", CFG_OPT, &method));
    c->router = LAYER_ROUTE_GROUPED;
    c->gate_sigmoid = score && strcmp(score, "sigmoid") == 0;
    if (score && !c->gate_sigmoid && strcmp(score, "softmax") != 0)
        rd_bad(r, "config key 'scoring_func' = \"%.40s\" is not supported (softmax or sigmoid)",
               score);
    bool greedy = method && strcmp(method, "greedy") == 0;
    c->gate_top2 = c->gate_bias = method && strcmp(method, "noaux_tc") == 0;
    if (method && !greedy && !c->gate_top2 && strcmp(method, "group_limited_greedy") != 0)
        rd_bad(r, "config key 'topk_method' = \"%.40s\" is not supported (greedy, "
                  "group_limited_greedy or noaux_tc)", method);
    c->n_group = v3 ? 8 : 1; /* the classes' defaults */
    c->topk_group = v3 ? 4 : 1;
    c->gate_norm = v3;
    rd_int(r, "n_group", &c->n_group);
    rd_int(r, "topk_group", &c->topk_group);
    if (greedy) c->n_group = c->topk_group = 1; /* greedy reads no groups */
    rd_bool(r, "norm_topk_prob", &c->gate_norm);
    if (!v3 && c->gate_norm)
        rd_bad(r, "config key 'norm_topk_prob' = true is not supported for deepseek_v2: the "
                  "references disagree on it (moemu scales the top-k scores without "
                  "renormalising)");
    rd_num(r, "routed_scaling_factor", &c->routed_scaling_factor);
}

/* The groups divide the experts, and the chosen groups hold k experts. */
static void deepseek_rules(cfg_rd_t *r, const cfg_model_t *c)
{
    int E = c->num_local_experts, G = c->n_group, TG = c->topk_group;
    if (G < 1 || TG < 1) {
        rd_bad(r, "config keys 'n_group' = %d and 'topk_group' = %d must be at least 1", G, TG);
        return;
    }
    if (E > 0 && E % G != 0)
        rd_bad(r, "config key 'n_group' = %d does not divide the %d routed experts", G, E);
    else if (TG > G)
        rd_bad(r, "config key 'topk_group' = %d exceeds n_group = %d", TG, G);
    else if (E > 0 && c->num_experts_per_tok > TG * (E / G))
        rd_bad(r, "config key 'num_experts_per_tok' = %d exceeds the %d experts of the "
                  "topk_group = %d chosen groups", c->num_experts_per_tok, TG * (E / G), TG);
    if (c->kv_lora_rank <= 0)
        rd_bad(r, "config key 'kv_lora_rank' must be positive (multi-head latent attention), "
                  "got %d", c->kv_lora_rank);
    if (c->qk_rope_head_dim <= 0 || c->qk_rope_head_dim % 2 || c->qk_nope_head_dim < 0 ||
        c->v_head_dim <= 0 || c->q_lora_rank < 0)
        rd_bad(r, "config keys 'qk_rope_head_dim' = %d (positive, even), 'qk_nope_head_dim' = "
                  "%d, 'v_head_dim' = %d and 'q_lora_rank' = %d are not a usable MLA",
               c->qk_rope_head_dim, c->qk_nope_head_dim, c->v_head_dim, c->q_lora_rank);
}

static void read_deepseek(cfg_rd_t *r, cfg_model_t *c, bool v3)
{
    rd_hf_common(r, c, "n_routed_experts", "moe_intermediate_size");
    /* MLA has no key/value heads of its own: the class's value is unused */
    c->num_key_value_heads = c->num_attention_heads;
    rd_int(r, "q_lora_rank", &c->q_lora_rank);
    if (json_is_null(json_object_get(r->src.root, "q_lora_rank"))) c->q_lora_rank = 0; /* q_proj */
    rd_int(r, "kv_lora_rank", &c->kv_lora_rank);
    rd_int(r, "qk_nope_head_dim", &c->qk_nope_head_dim);
    rd_int(r, "qk_rope_head_dim", &c->qk_rope_head_dim);
    rd_int(r, "v_head_dim", &c->v_head_dim);
    c->head_dim = c->qk_nope_head_dim + c->qk_rope_head_dim;
    rd_has(r, "head_dim"); /* transformers 5 writes qk_rope_head_dim there */
    int shared = v3 ? 1 : 2; /* the classes' defaults */
    rd_int(r, "n_shared_experts", &shared);
    c->num_shared_experts = shared > 0;
    c->shared_expert_intermediate_size = shared > 0 ? shared * c->intermediate_size : 0;
    rd_deepseek_dense(r, c, v3);
    rd_deepseek_router(r, c, v3);
    rd_bool(r, "rope_interleave", &c->rope_interleave);
    if (!v3 && !c->rope_interleave)
        rd_bad(r, "config key 'rope_interleave' = false is not supported for deepseek_v2, whose "
                  "code always rotates interleaved pairs");
    rd_int(r, "num_nextn_predict_layers", &c->num_nextn_predict_layers);
    bool bias = false;
    rd_bool(r, "attention_bias", &bias);
    if (bias) rd_bad(r, "config key 'attention_bias' = true is not supported for MLA");
    static const char *const inert[] = {"aux_loss_alpha", "seq_aux", "ep_size", "pretraining_tp",
                                        NULL};
    rd_known(r, inert);
    deepseek_rules(r, c);
}

static void read_deepseek_v2(cfg_rd_t *r, cfg_model_t *c) { read_deepseek(r, c, false); }
static void read_deepseek_v3(cfg_rd_t *r, cfg_model_t *c) { read_deepseek(r, c, true); }

/* The configuration classes' defaults (transformers 4.5x). */
#define CFG_HF_BASE_AS(fam, dt, theta, ...)                                                       \
    {.family = &fam, .hidden_act = LAYER_ACT_SILU, .dtype = dt, .embedding_multiplier = 1,       \
     .residual_multiplier = 1, .logits_scaling = 1, .rope_theta = theta, __VA_ARGS__}
#define CFG_HF_BASE(fam, ...) CFG_HF_BASE_AS(fam, EMU_DTYPE_FP32, 1e4, __VA_ARGS__)

/* sliding_window and layer_types (gpt-oss): a sliding_attention layer
 * attends within the window; by default the even layers, as GptOssConfig
 * sets them. */
static void rd_sliding(cfg_rd_t *r, cfg_model_t *c)
{
    rd_int(r, "sliding_window", &c->sliding_window);
    if (c->sliding_window < 1)
        rd_bad(r, "config key 'sliding_window' must be at least 1, got %d", c->sliding_window);
    json_t *lt = NULL, *v;
    if (rd_has(r, "layer_types"))
        rd_note(r, emu_json_arr(&r->src.js, r->src.root, "layer_types", CFG_OPT, &lt));
    int L = c->num_hidden_layers;
    if (L < 1 || L > CFG_MAX_LAYERS) return; /* the layer count's own problem */
    if (lt && json_array_size(lt) != (size_t)L) {
        rd_bad(r, "config key 'layer_types' has %zu entries for num_hidden_layers = %d",
               json_array_size(lt), L);
        return;
    }
    for (int l = 0; l < L; l++) {
        bool sliding = l % 2 == 0;
        v = lt ? json_array_get(lt, (size_t)l) : NULL;
        const char *s = json_string_value(v);
        if (lt && s && !strcmp(s, "sliding_attention")) sliding = true;
        else if (lt && s && !strcmp(s, "full_attention")) sliding = false;
        else if (lt) {
            char got[96];
            emu_json_describe(v, got, sizeof got);
            rd_bad(r, "config key 'layer_types[%d]' = %s is neither \"sliding_attention\" nor "
                      "\"full_attention\"", l, got);
        }
        if (sliding) c->sliding[l / 8] |= (uint8_t)(1u << (l % 8)), c->num_sliding_layers++;
    }
}

static void read_gpt_oss(cfg_rd_t *r, cfg_model_t *c)
{
    rd_hf_common(r, c, "num_local_experts", "intermediate_size");
    c->hidden_act = LAYER_ACT_SWIGLU_OAI; /* "silu" in the config: its own SwiGLU */
    rd_int(r, "head_dim", &c->head_dim); /* the class's 64, not hidden / heads */
    rd_attention_bias(r, c);
    rd_num(r, "swiglu_limit", &c->swiglu_limit);
    if (!(c->swiglu_limit > 0) || !isfinite(c->swiglu_limit))
        rd_bad(r, "config key 'swiglu_limit' must be a finite number > 0, got %g", c->swiglu_limit);
    /* the class defaults YaRN; an explicit null means plain RoPE */
    if (json_is_null(json_object_get(r->src.root, "rope_scaling"))) c->yarn_factor = 0;
    rd_sliding(r, c);
    static const char *const unused[] = {"experts_per_token", "initial_context_length", NULL};
    rd_known(r, unused); /* the original release's keys; transformers ignores them */
}

moemu_status_t cfg_read_gpt_oss(cfg_model_t *out, json_t *root, const char *label)
{
    /* GptOssConfig's defaults; bf16, the dtype of the checkpoints' tensors */
    static const cfg_model_t base = CFG_HF_BASE_AS(
        family_gpt_oss, EMU_DTYPE_BF16, 150000, .vocab_size = 201088, .hidden_size = 2880,
        .num_hidden_layers = 36,
        .num_attention_heads = 64, .num_key_value_heads = 8, .head_dim = 64,
        .num_local_experts = 128, .num_experts_per_tok = 4, .intermediate_size = 2880,
        .max_position_embeddings = 131072, .rms_norm_eps = 1e-5,
        .qkv_bias = true, .o_bias = true, .sinks = true, .expert_bias = true,
        .router = LAYER_ROUTE_TOPK_SOFTMAX, .sliding_window = 128, .swiglu_limit = 7.0,
        .yarn_factor = 32, .yarn_original_max = 4096,
        .yarn_beta_fast = 32, .yarn_beta_slow = 1);
    return rd_run(out, root, label, read_gpt_oss, &base);
}

moemu_status_t cfg_read_qwen2_moe(cfg_model_t *out, json_t *root, const char *label)
{
    static const cfg_model_t base = CFG_HF_BASE(
        family_qwen2_moe, .vocab_size = 151936, .hidden_size = 2048, .num_hidden_layers = 24,
        .num_attention_heads = 16, .num_local_experts = 60, .num_experts_per_tok = 4,
        .intermediate_size = 1408, .dense_intermediate_size = 5632,
        .shared_expert_intermediate_size = 5632, .qkv_bias = true, .max_position_embeddings = 32768,
        .rms_norm_eps = 1e-6);
    return rd_run(out, root, label, read_qwen2_moe, &base);
}

moemu_status_t cfg_read_qwen3_moe(cfg_model_t *out, json_t *root, const char *label)
{
    static const cfg_model_t base = CFG_HF_BASE(
        family_qwen3_moe, .vocab_size = 151936, .hidden_size = 2048, .num_hidden_layers = 24,
        .num_attention_heads = 32, .num_key_value_heads = 4, .num_local_experts = 128,
        .num_experts_per_tok = 8,
        .intermediate_size = 768, .dense_intermediate_size = 6144,
        .qk_norm = LAYER_QKNORM_HEAD, .max_position_embeddings = 32768, .rms_norm_eps = 1e-6);
    return rd_run(out, root, label, read_qwen3_moe, &base);
}

moemu_status_t cfg_read_olmoe(cfg_model_t *out, json_t *root, const char *label)
{
    static const cfg_model_t base = CFG_HF_BASE(
        family_olmoe, .vocab_size = 50304, .hidden_size = 2048, .num_hidden_layers = 16,
        .num_attention_heads = 16, .num_local_experts = 64, .num_experts_per_tok = 8,
        .intermediate_size = 2048, .max_position_embeddings = 4096, .rms_norm_eps = 1e-5,
        .qk_norm = LAYER_QKNORM_WIDTH);
    return rd_run(out, root, label, read_olmoe, &base);
}

moemu_status_t cfg_read_granitemoe(cfg_model_t *out, json_t *root, const char *label)
{
    static const cfg_model_t base = CFG_HF_BASE(
        family_granitemoe, .vocab_size = 32000, .hidden_size = 4096, .num_hidden_layers = 32,
        .num_attention_heads = 32, .num_local_experts = 8, .num_experts_per_tok = 2,
        .intermediate_size = 11008, .max_position_embeddings = 2048,
        .router = LAYER_ROUTE_TOPK_SOFTMAX, .attention_multiplier = 1, .rms_norm_eps = 1e-6);
    return rd_run(out, root, label, read_granitemoe, &base);
}

/* model_type names the family; none is moemu's own (Mixtral) format. */
static moemu_status_t cfg_get_family(const cfg_src_t *src, const model_family_t **out)
{
    const char *type = NULL;
    MOEMU_CHECK(emu_json_str(&src->js, src->root, "model_type", CFG_OPT, &type));
    *out = &family_mixtral;
    if (!type) return MOEMU_OK;
    if (!(*out = family_find(type)))
        return emu_json_bad(&src->js, "model_type", NULL,
                            "= \"%.40s\" is not a family moemu implements (%s)", type,
                            family_names());
    return MOEMU_OK;
}

/* The family by model_type, then the family's own reading of the rest. */
static moemu_status_t cfg_from_json(cfg_model_t *out, json_t *root,
                                    const char *label)
{
    cfg_src_t src = {{.origin = label, .noun = "config key"}, root};
    if (!json_is_object(root)) {
        char got[96];
        emu_json_describe(root, got, sizeof got);
        return moemu_fail(MOEMU_ERR_INVALID,
                          "%s: a config must be a JSON object, got %s", label,
                          got);
    }
    const model_family_t *fam;
    MOEMU_CHECK(cfg_get_family(&src, &fam));
    return fam->config(out, root, label);
}

moemu_status_t cfg_parse(cfg_model_t *cfg, const char *json_text,
                         const char *label)
{
    if (!label || !label[0]) label = "config";
    if (!json_text)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: no config text", label);
    const emu_json_src_t src = {.origin = label};
    json_t *root;
    MOEMU_CHECK(emu_json_load_text(&src, json_text, &root));
    moemu_status_t st = cfg_from_json(cfg, root, label);
    json_decref(root);
    return st;
}

moemu_status_t cfg_load(cfg_model_t *cfg, const char *name_or_path)
{
    if (!name_or_path || !name_or_path[0])
        return moemu_fail(MOEMU_ERR_INVALID,
                          "no model given (a built-in name or a config.json "
                          "path)");
    for (size_t i = 0; i < CFG_NBUILTIN; i++)
        if (strcmp(name_or_path, cfg_builtins[i].name) == 0) {
            MOEMU_CHECK(cfg_validate(&cfg_builtins[i]));
            *cfg = cfg_builtins[i];
            return MOEMU_OK;
        }

    struct stat sb;
    bool found = stat(name_or_path, &sb) == 0;
    if (found && S_ISDIR(sb.st_mode))
        return moemu_fail(MOEMU_ERR_IO,
                          "%s: cannot read config: is a directory (give the "
                          "config.json inside it)",
                          name_or_path);
    if (!found && errno == ENOENT && !strchr(name_or_path, '/') &&
        !strstr(name_or_path, ".json")) {
        /* A bare word was most likely meant as a built-in name. */
        char names[256] = "";
        for (size_t i = 0; cfg_builtin_names[i]; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names),
                     "%s%s", i ? ", " : "", cfg_builtin_names[i]);
        return moemu_fail(MOEMU_ERR_IO,
                          "%s: no such built-in model (%s) or config file: %s",
                          name_or_path, names, strerror(ENOENT));
    }
    const emu_json_src_t src = {.origin = name_or_path};
    json_t *root;
    MOEMU_CHECK(emu_json_load_file(&src, name_or_path, &root));
    moemu_status_t st = cfg_from_json(cfg, root, name_or_path);
    json_decref(root);
    return st;
}

moemu_status_t cfg_read_deepseek_v2(cfg_model_t *out, json_t *root, const char *label)
{
    static const cfg_model_t base = CFG_HF_BASE(
        family_deepseek_v2, .vocab_size = 102400, .hidden_size = 4096, .num_hidden_layers = 30,
        .num_attention_heads = 32, .num_local_experts = 64, .num_experts_per_tok = 6,
        .intermediate_size = 1407, .dense_intermediate_size = 11008, .q_lora_rank = 1536,
        .kv_lora_rank = 512, .qk_nope_head_dim = 128, .qk_rope_head_dim = 64,
        .v_head_dim = 128, .routed_scaling_factor = 1.0, .rope_interleave = true,
        .max_position_embeddings = 2048, .rms_norm_eps = 1e-6);
    return rd_run(out, root, label, read_deepseek_v2, &base);
}

moemu_status_t cfg_read_deepseek_v3(cfg_model_t *out, json_t *root, const char *label)
{
    static const cfg_model_t base = CFG_HF_BASE(
        family_deepseek_v3, .vocab_size = 129280, .hidden_size = 7168, .num_hidden_layers = 61,
        .num_attention_heads = 128, .num_local_experts = 256,
        .num_experts_per_tok = 8, .intermediate_size = 2048, .dense_intermediate_size = 18432,
        .q_lora_rank = 1536, .kv_lora_rank = 512, .qk_nope_head_dim = 128,
        .qk_rope_head_dim = 64, .v_head_dim = 128, .routed_scaling_factor = 2.5,
        .rope_interleave = true, .max_position_embeddings = 4096, .rms_norm_eps = 1e-6);
    return rd_run(out, root, label, read_deepseek_v3, &base);
}

moemu_status_t cfg_read_kimi_k2(cfg_model_t *out, json_t *root, const char *label)
{
    moemu_status_t st = cfg_read_deepseek_v3(out, root, label);
    if (st == MOEMU_OK) out->family = &family_kimi_k2; /* V3's architecture, its own name */
    return st;
}
