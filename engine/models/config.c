/* Model configuration: built-in models, Hugging Face config.json parsing
 * (through jansson), the rules a usable config obeys and the figures derived
 * from it. docs/config.md is the reference for every key. */
#include <errno.h>
#include <limits.h>
#include <math.h>
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
     .shared_expert_intermediate_size = 96},
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
     .shared_expert_intermediate_size = 1024},
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
     .shared_expert_intermediate_size = 2048},
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
    {"rope_scaling", CFG_REFUSE_NONNULL, 0, NULL,
     "RoPE scaling is not supported; moemu applies plain RoPE (use null)"},
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

static moemu_status_t cfg_check_refusals(const cfg_src_t *src)
{
    for (size_t i = 0; i < sizeof cfg_refusals / sizeof cfg_refusals[0]; i++)
        MOEMU_CHECK(cfg_check_refusal(src, &cfg_refusals[i]));

    /* Qwen writes a window size together with use_sliding_window: false,
     * which switches it off; otherwise a window is a real restriction. */
    json_t *w = json_object_get(src->root, "sliding_window");
    json_t *use = json_object_get(src->root, "use_sliding_window");
    if (cfg_present(src, "sliding_window") && !json_is_false(use))
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

/* Computes every figure; returns false if a count overflows int64. */
static bool cfg_count(const cfg_model_t *c, cfg_figures_t *o, const char **what)
{
    cfg_ck_t ck = {false, NULL};
    const int64_t V = c->vocab_size, d = c->hidden_size,
                  F = c->intermediate_size, L = c->num_hidden_layers,
                  H = c->num_attention_heads, Hkv = c->num_key_value_heads,
                  hd = c->head_dim, E = c->num_local_experts,
                  k = c->num_experts_per_tok, S = c->num_shared_experts,
                  Fs = c->shared_expert_intermediate_size;
    /* SwiGLU experts have w1, w2, w3; GELU experts only w1, w2. */
    const int64_t mats = c->hidden_act == LAYER_ACT_GELU ? 2 : 3;
    const bool gelu = mats == 2;
    memset(o, 0, sizeof *o);

#define P(name, ...)                                                           \
    cfg_prod(&ck, name, (const int64_t[]){__VA_ARGS__},                        \
             (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
    int64_t vd = P("vocab_size * hidden_size", V, d);
    o->embedding = vd;
    /* q and o are (H*hd, d) and (d, H*hd); k and v are (Hkv*hd, d). */
    int64_t att_q =
        P("2 * hidden_size * num_attention_heads * head_dim", 2, d, H, hd);
    int64_t att_kv =
        P("2 * hidden_size * num_key_value_heads * head_dim", 2, d, Hkv, hd);
    int64_t att_layer = cfg_add(&ck, "attention parameters", att_q, att_kv);
    o->attention =
        cfg_mul(&ck, "attention parameters * num_hidden_layers", att_layer, L);
    o->router =
        P("num_local_experts * hidden_size * num_hidden_layers", E, d, L);
    int64_t expert = P(gelu ? "2 * hidden_size * intermediate_size"
                            : "3 * hidden_size * intermediate_size",
                       mats, d, F);
    o->experts = P(gelu ? "num_local_experts * 2 * hidden_size * "
                          "intermediate_size * num_hidden_layers"
                        : "num_local_experts * 3 * hidden_size * "
                          "intermediate_size * num_hidden_layers",
                   E, expert, L);
    int64_t routed_active = P("num_experts_per_tok * expert * "
                              "num_hidden_layers",
                              k, expert, L);
    o->shared = P(gelu ? "num_shared_experts * 2 * hidden_size * "
                         "shared_expert_intermediate_size * num_hidden_layers"
                       : "num_shared_experts * 3 * hidden_size * "
                         "shared_expert_intermediate_size * num_hidden_layers",
                  S, mats, d, Fs, L);
    int64_t norms_l = P("2 * hidden_size * num_hidden_layers", 2, d, L);
    o->norms = cfg_add(&ck, "norm parameters", norms_l, d);
    o->lm_head = c->tie_word_embeddings ? 0 : vd;
#undef P

    int64_t t = o->embedding;
    const int64_t parts[] = {o->attention, o->router, o->experts,
                             o->shared,    o->norms,  o->lm_head};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        t = cfg_add(&ck, "the total parameter count", t, parts[i]);
    o->total = t;

    /* The output projection reads V*d weights per token whether or not it
     * is tied to the embedding; the embedding lookup reads one row. */
    int64_t matmul = o->attention;
    const int64_t mm[] = {o->router, routed_active, o->shared, vd};
    for (size_t i = 0; i < sizeof mm / sizeof mm[0]; i++)
        matmul = cfg_add(&ck, "the active parameter count", matmul, mm[i]);
    o->active_per_token =
        cfg_add(&ck, "the active parameter count", matmul, o->norms);

    o->weight_bytes = (double)o->total * (double)emu_dtype_size(c->dtype);
    o->flops_per_token = 2.0 * (double)matmul;
    o->attn_flops_per_pair = 4.0 * (double)H * (double)hd * (double)L;
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
    if (c->hidden_act != LAYER_ACT_SILU && c->hidden_act != LAYER_ACT_GELU)
        cfg_bad(p, "hidden_act", "silu or gelu", c->hidden_act);
    if (c->dtype != EMU_DTYPE_FP16 && c->dtype != EMU_DTYPE_BF16 && c->dtype != EMU_DTYPE_FP32)
        moemu_problem(p, "config key 'dtype' must be fp16, bf16 or fp32, got %s",
                    (unsigned)c->dtype < EMU_DTYPE__COUNT ? emu_dtype_name(c->dtype)
                                                          : "an unknown dtype");
    if (c->num_shared_experts < 0)
        cfg_bad(p, "num_shared_experts", ">= 0", c->num_shared_experts);
    if (c->shared_expert_intermediate_size < 0 ||
        (c->num_shared_experts > 0 && c->shared_expert_intermediate_size == 0))
        cfg_bad(p, "shared_expert_intermediate_size", "positive when num_shared_experts > 0",
                c->shared_expert_intermediate_size);
}

static moemu_status_t cfg_validate_as(const cfg_model_t *c, const char *label)
{
    moemu_problems_t p = {.len = 0};
    cfg_check_sizes(&p, c);
    cfg_check_values(&p, c);
    if (p.n) return moemu_fail(MOEMU_ERR_INVALID, "%s: %s", label, p.buf);
    cfg_figures_t f;
    const char *what = NULL;
    if (!cfg_count(c, &f, &what))
        return moemu_fail(MOEMU_ERR_INVALID,
                          "%s: config sizes are too large: %s overflows a "
                          "64-bit count (vocab_size = %d, hidden_size = %d, "
                          "intermediate_size = %d, num_hidden_layers = %d, "
                          "num_local_experts = %d)",
                          label, what, c->vocab_size, c->hidden_size,
                          c->intermediate_size, c->num_hidden_layers,
                          c->num_local_experts);
    return MOEMU_OK;
}

moemu_status_t cfg_validate(const cfg_model_t *cfg)
{
    return cfg_validate_as(cfg, cfg->name[0] ? cfg->name : "config");
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
        if (!emu_dtype_parse(s, out) || *out == EMU_DTYPE_INT32)
            return emu_json_bad(&src->js, keys[i], NULL,
                                "= \"%.40s\" is not a supported dtype (fp16, "
                                "bf16, fp32, or float16, bfloat16, float32)",
                                s);
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

moemu_status_t cfg_read_mixtral(cfg_model_t *out, json_t *root, const char *label)
{
    cfg_src_t src = {{.origin = label, .noun = "config key"}, root};
    MOEMU_CHECK(cfg_check_refusals(&src));

    cfg_model_t c;
    memset(&c, 0, sizeof c);
    cfg_set_name(&c, label);
    c.family = &family_mixtral;
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
        MOEMU_CHECK(cfg_required(&src, required[i].key,
                                 (int *)((char *)&c + required[i].off)));

    c.num_key_value_heads = c.num_attention_heads;
    MOEMU_CHECK(cfg_int(&src, "num_key_value_heads", &c.num_key_value_heads));
    MOEMU_CHECK(cfg_int(&src, "head_dim", &c.head_dim));
    /* Default d / H, only when exact; a bad d or H is reported by
     * validation below under its own name. */
    if (!cfg_present(&src, "head_dim") && c.hidden_size > 0 &&
        c.num_attention_heads > 0) {
        if (c.hidden_size % c.num_attention_heads != 0)
            return moemu_fail(MOEMU_ERR_INVALID,
                              "%s: config key 'head_dim' is not given and "
                              "hidden_size = %d is not divisible by "
                              "num_attention_heads = %d; give head_dim",
                              label, c.hidden_size, c.num_attention_heads);
        c.head_dim = c.hidden_size / c.num_attention_heads;
    }
    c.max_position_embeddings = 32768;
    MOEMU_CHECK(cfg_int(&src, "max_position_embeddings",
                        &c.max_position_embeddings));
    c.rms_norm_eps = 1e-5;
    MOEMU_CHECK(
        emu_json_num(&src.js, root, "rms_norm_eps", CFG_OPT, &c.rms_norm_eps));
    c.rope_theta = 1e6;
    MOEMU_CHECK(
        emu_json_num(&src.js, root, "rope_theta", CFG_OPT, &c.rope_theta));
    c.capacity_factor = 0.0;
    MOEMU_CHECK(emu_json_num(&src.js, root, "capacity_factor", CFG_OPT,
                             &c.capacity_factor));
    c.hidden_act = LAYER_ACT_SILU;
    MOEMU_CHECK(cfg_get_act(&src, &c.hidden_act));
    c.tie_word_embeddings = false;
    MOEMU_CHECK(emu_json_bool(&src.js, root, "tie_word_embeddings", CFG_OPT,
                              &c.tie_word_embeddings));
    c.dtype = EMU_DTYPE_FP16;
    MOEMU_CHECK(cfg_get_dtype(&src, &c.dtype));
    c.num_shared_experts = 0;
    MOEMU_CHECK(cfg_int(&src, "num_shared_experts", &c.num_shared_experts));
    c.shared_expert_intermediate_size = c.intermediate_size;
    MOEMU_CHECK(cfg_int(&src, "shared_expert_intermediate_size",
                        &c.shared_expert_intermediate_size));

    /* Qwen/DeepSeek keep the routed expert size in moe_intermediate_size
     * and a dense MLP size in intermediate_size: reading the latter would
     * silently build a different model. */
    if (cfg_present(&src, "moe_intermediate_size")) {
        int moe_f = 0;
        MOEMU_CHECK(cfg_int(&src, "moe_intermediate_size", &moe_f));
        if (moe_f != c.intermediate_size)
            return moemu_fail(MOEMU_ERR_INVALID,
                              "%s: config key 'moe_intermediate_size' = %d "
                              "differs from intermediate_size = %d; moemu "
                              "reads the routed expert size from "
                              "intermediate_size",
                              label, moe_f, c.intermediate_size);
    }

    MOEMU_CHECK(cfg_validate_as(&c, label));
    *out = c;
    return MOEMU_OK;
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
