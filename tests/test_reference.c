/* An independent reference: a naive forward pass in double written straight
 * from Hugging Face transformers' modeling code for each model_type
 * (mixtral, qwen2_moe, qwen3_moe, olmoe, granitemoe; deepseek_v2, deepseek_v3
 * and kimi_k2 with multi-head latent attention in its naive, non-absorbed
 * form, YaRN and the grouped router), reading the weights
 * by their Hugging Face names, compared with moemu's one-device prompt
 * logits. It deliberately shares no code with layers/ or the decoder: the
 * config is read from the same JSON with the families' own defaults, and
 * every formula is spelled out here, so a misreading in moemu shows up as
 * a disagreement instead of being copied.
 *
 * The "teeth" tests switch one feature off in the reference only and
 * require the comparison to fail, so a pass means the feature was checked. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu/emu.h"
#include "engine/run/runner.h"

/* ------------------------------------------------------------------ */
/* The cases: each family's config.json in its own key names.          */

/* Mixtral: GQA, always renormalised top-k. */
static const char mixtral_json[] =
    "{\"model_type\":\"mixtral\",\"vocab_size\":64,\"hidden_size\":32,"
    "\"intermediate_size\":40,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
    "\"num_key_value_heads\":2,\"num_local_experts\":4,\"num_experts_per_tok\":2,"
    "\"rms_norm_eps\":1e-5,\"rope_theta\":1000000.0,\"sliding_window\":null,"
    "\"max_position_embeddings\":64,\"tie_word_embeddings\":false,"
    "\"hidden_act\":\"silu\",\"torch_dtype\":\"float32\"}";

/* Qwen2-MoE: q/k/v biases, no renormalisation, a gated shared expert, and
 * dense layers 0 and 2 from decoder_sparse_step 2. */
static const char qwen2_json[] =
    "{\"model_type\":\"qwen2_moe\",\"vocab_size\":80,\"hidden_size\":48,"
    "\"intermediate_size\":40,\"moe_intermediate_size\":16,"
    "\"shared_expert_intermediate_size\":24,\"num_hidden_layers\":4,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"num_experts\":8,"
    "\"num_experts_per_tok\":2,\"norm_topk_prob\":false,\"decoder_sparse_step\":2,"
    "\"mlp_only_layers\":[],\"rms_norm_eps\":1e-6,\"rope_theta\":10000.0,"
    "\"use_sliding_window\":false,\"max_position_embeddings\":64,"
    "\"tie_word_embeddings\":false,\"hidden_act\":\"silu\",\"torch_dtype\":\"float32\"}";

/* Qwen3-MoE: head_dim 16 with hidden 32 over 4 heads (H*hd != d), per-head
 * query/key norms, attention_bias (q, k, v and o biases), renormalised
 * top-k, layer 1 dense by mlp_only_layers. */
static const char qwen3_json[] =
    "{\"model_type\":\"qwen3_moe\",\"vocab_size\":72,\"hidden_size\":32,"
    "\"intermediate_size\":48,\"moe_intermediate_size\":24,\"num_hidden_layers\":3,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":16,"
    "\"num_experts\":8,\"num_experts_per_tok\":2,\"norm_topk_prob\":true,"
    "\"decoder_sparse_step\":1,\"mlp_only_layers\":[1],\"rms_norm_eps\":1e-6,"
    "\"rope_theta\":1000000.0,\"attention_bias\":true,\"use_sliding_window\":false,"
    "\"max_position_embeddings\":64,\"tie_word_embeddings\":false,"
    "\"hidden_act\":\"silu\",\"torch_dtype\":\"float32\"}";

/* OLMoE: 6 heads over 2 kv heads, whole-width query/key norms, clip_qkv
 * small enough to clamp (checked), norm_topk_prob left to its default
 * (false), top-3. */
static const char olmoe_json[] =
    "{\"model_type\":\"olmoe\",\"vocab_size\":96,\"hidden_size\":48,"
    "\"intermediate_size\":32,\"num_hidden_layers\":3,\"num_attention_heads\":6,"
    "\"num_key_value_heads\":2,\"num_experts\":8,\"num_experts_per_tok\":3,"
    "\"clip_qkv\":1.5,\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0,"
    "\"attention_bias\":false,\"max_position_embeddings\":64,"
    "\"tie_word_embeddings\":false,\"hidden_act\":\"silu\",\"torch_dtype\":\"float32\"}";

/* GraniteMoE: the four multipliers, fused experts, tied embeddings. */
static const char granite_json[] =
    "{\"model_type\":\"granitemoe\",\"vocab_size\":60,\"hidden_size\":48,"
    "\"intermediate_size\":24,\"num_hidden_layers\":3,\"num_attention_heads\":4,"
    "\"num_key_value_heads\":2,\"num_local_experts\":6,\"num_experts_per_tok\":2,"
    "\"embedding_multiplier\":12.0,\"attention_multiplier\":0.0625,"
    "\"residual_multiplier\":0.22,\"logits_scaling\":6.0,\"rms_norm_eps\":1e-6,"
    "\"rope_theta\":10000.0,\"attention_bias\":false,\"max_position_embeddings\":64,"
    "\"tie_word_embeddings\":true,\"hidden_act\":\"silu\",\"torch_dtype\":\"float32\"}";

/* DeepSeek-V3: MLA with a q LoRA, YaRN (factor 4 over 8 original
 * positions, mscale = mscale_all_dim = 1: attention factor 1, softmax
 * scale times mscale^2), interleaved RoPE pairs, a sigmoid router with
 * e_score_correction_bias over 4 groups of which 2 are kept, renormalised
 * top-4 times 2.5, two shared experts, layer 0 dense. */
static const char dsv3_json[] =
    "{\"model_type\":\"deepseek_v3\",\"vocab_size\":90,\"hidden_size\":48,"
    "\"intermediate_size\":40,\"moe_intermediate_size\":12,\"num_hidden_layers\":3,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":4,\"q_lora_rank\":24,"
    "\"kv_lora_rank\":32,\"qk_nope_head_dim\":8,\"qk_rope_head_dim\":8,\"v_head_dim\":12,"
    "\"n_routed_experts\":16,\"num_experts_per_tok\":4,\"n_group\":4,\"topk_group\":2,"
    "\"n_shared_experts\":2,\"routed_scaling_factor\":2.5,\"norm_topk_prob\":true,"
    "\"scoring_func\":\"sigmoid\",\"topk_method\":\"noaux_tc\",\"first_k_dense_replace\":1,"
    "\"moe_layer_freq\":1,\"rms_norm_eps\":1e-6,\"rope_theta\":10000.0,"
    "\"rope_interleave\":true,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4.0,"
    "\"original_max_position_embeddings\":8,\"beta_fast\":32,\"beta_slow\":1,"
    "\"mscale\":1.0,\"mscale_all_dim\":1.0},\"max_position_embeddings\":64,"
    "\"attention_bias\":false,\"tie_word_embeddings\":false,\"hidden_act\":\"silu\","
    "\"torch_dtype\":\"float32\"}";

/* DeepSeek-V2: no q LoRA (q_proj), a softmax router limited to the 2 best
 * of 4 groups by their best expert (group_limited_greedy), weights not
 * renormalised, times 1.5; YaRN with mscale = mscale_all_dim = 0.707 over a
 * 16-wide rope part with theta 100 and 64 original positions, so that the
 * ramp between interpolation and extrapolation has fractional steps. */
static const char dsv2_json[] =
    "{\"model_type\":\"deepseek_v2\",\"vocab_size\":88,\"hidden_size\":48,"
    "\"intermediate_size\":36,\"moe_intermediate_size\":12,\"num_hidden_layers\":3,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":4,\"q_lora_rank\":null,"
    "\"kv_lora_rank\":32,\"qk_nope_head_dim\":8,\"qk_rope_head_dim\":16,\"v_head_dim\":12,"
    "\"n_routed_experts\":16,\"num_experts_per_tok\":4,\"n_group\":4,\"topk_group\":2,"
    "\"topk_method\":\"group_limited_greedy\",\"n_shared_experts\":2,"
    "\"routed_scaling_factor\":1.5,\"norm_topk_prob\":false,\"scoring_func\":\"softmax\","
    "\"first_k_dense_replace\":1,\"moe_layer_freq\":1,\"rms_norm_eps\":1e-6,"
    "\"rope_theta\":100.0,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4.0,"
    "\"original_max_position_embeddings\":64,\"beta_fast\":32,\"beta_slow\":1,"
    "\"mscale\":0.707,\"mscale_all_dim\":0.707},\"max_position_embeddings\":256,"
    "\"attention_bias\":false,\"tie_word_embeddings\":false,\"hidden_act\":\"silu\","
    "\"torch_dtype\":\"float32\"}";

/* Kimi-K2: DeepSeek-V3's architecture with one expert group (so no group
 * limit); mscale 1 over mscale_all_dim 0.8 makes YaRN's attention factor
 * (which scales cos and sin) 1.025 instead of 1. */
static const char kimi_json[] =
    "{\"model_type\":\"kimi_k2\",\"vocab_size\":92,\"hidden_size\":48,"
    "\"intermediate_size\":40,\"moe_intermediate_size\":12,\"num_hidden_layers\":3,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":4,\"q_lora_rank\":24,"
    "\"kv_lora_rank\":32,\"qk_nope_head_dim\":8,\"qk_rope_head_dim\":8,\"v_head_dim\":12,"
    "\"n_routed_experts\":16,\"num_experts_per_tok\":4,\"n_group\":1,\"topk_group\":1,"
    "\"n_shared_experts\":2,\"routed_scaling_factor\":2.827,\"norm_topk_prob\":true,"
    "\"scoring_func\":\"sigmoid\",\"topk_method\":\"noaux_tc\",\"first_k_dense_replace\":1,"
    "\"moe_layer_freq\":1,\"rms_norm_eps\":1e-6,\"rope_theta\":50000.0,"
    "\"rope_interleave\":true,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4.0,"
    "\"original_max_position_embeddings\":8,\"beta_fast\":32,\"beta_slow\":1,"
    "\"mscale\":1.0,\"mscale_all_dim\":0.8},\"max_position_embeddings\":64,"
    "\"attention_bias\":false,\"tie_word_embeddings\":false,\"hidden_act\":\"silu\","
    "\"torch_dtype\":\"float32\"}";

/* ------------------------------------------------------------------ */
/* The reference's own reading of the config, with HF's defaults.      */

typedef enum { MIXTRAL, QWEN2_MOE, QWEN3_MOE, OLMOE, GRANITEMOE, DEEPSEEK_V2, DEEPSEEK_V3,
               KIMI_K2, GPT_OSS } fam_t;

/* Features the teeth tests (and the diagnosis of a failure) switch in the
 * reference only. */
enum {
    FLIP_RENORM = 1,       /* toggle the top-k renormalisation */
    FLIP_SHARED_GATE = 2,  /* shared expert added ungated */
    FLIP_RESIDUAL_MUL = 4, /* granite residual_multiplier taken as 1 */
    FLIP_CLIP = 8,         /* olmoe clip_qkv ignored */
    FLIP_ALL_MOE = 16,     /* qwen dense layers taken as MoE */
    FLIP_BIAS = 32,        /* deepseek e_score_correction_bias ignored */
    FLIP_MSCALE = 64,      /* deepseek softmax scale's mscale^2 toggled */
    FLIP_INTERLEAVE = 128, /* deepseek RoPE pairs toggled (interleaved / halves) */
    FLIP_GROUPS = 256,     /* deepseek group limit off */
    FLIP_SINKS = 512,      /* gpt-oss attention sinks ignored */
    FLIP_WINDOW = 1024,    /* gpt-oss sliding windows ignored */
    FLIP_SWIGLU = 2048,    /* gpt-oss clamps off, up without its + 1 */
};

#define MAX_LAYERS 8
#define MAX_ROPE 64 /* qk_rope_head_dim */

typedef struct {
    fam_t fam;
    int V, d, L, H, Hkv, hd, E, k;
    int F;  /* routed expert width */
    int Fs; /* qwen2_moe shared expert width */
    int Fd; /* qwen dense MLP width (intermediate_size) */
    double eps, theta;
    bool tie, renorm, qkv_bias, o_bias;
    double clip; /* 0: none */
    double emb_mul, attn_scale, res_mul, logits_div;
    bool dense[MAX_LAYERS];
    /* DeepSeek: multi-head latent attention (q_lora 0: q_proj) */
    bool mla;
    int q_lora, kv_lora, nope, rdim, vhd;
    bool interleave;                 /* RoPE pairs (2i, 2i+1), not (i, i + rdim/2) */
    double inv_freq[MAX_ROPE / 2];   /* YaRN's, rounded to float as HF keeps them */
    double rope_af;                  /* YaRN attention factor, times cos and sin */
    double mscale2;                  /* yarn_get_mscale(factor, mscale_all_dim)^2 */
    bool use_mscale2;                /* whether HF multiplies the softmax scale by it */
    /* DeepSeek's router */
    bool sigmoid, choice_bias, grouped, group_top2;
    int n_group, topk_group;
    double routed_scale;
    /* gpt-oss: sinks, sliding layers, clamped SwiGLU */
    int window;
    bool sliding[MAX_LAYERS];
    double limit;
} ref_cfg_t;

static double num_or(json_t *o, const char *key, double def)
{
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : def;
}

static int int_req(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_integer(v), "reference: config key %s missing", key);
    return (int)json_integer_value(v);
}

static bool bool_or(json_t *o, const char *key, bool def)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

static fam_t ref_family(const char *mt)
{
    static const char *const names[] = {"mixtral",    "qwen2_moe",   "qwen3_moe",
                                        "olmoe",      "granitemoe",  "deepseek_v2",
                                        "deepseek_v3", "kimi_k2",    "gpt_oss"};
    for (int i = 0; i < 9; i++)
        if (!strcmp(mt, names[i])) return (fam_t)i;
    cr_assert_fail("reference: unknown model_type %s", mt);
    return MIXTRAL;
}

/* HF Qwen2/3-MoE decoder layer: sparse iff not in mlp_only_layers and
 * num_experts > 0 and (l + 1) % decoder_sparse_step == 0. */
static void qwen_dense_layers(ref_cfg_t *c, json_t *root)
{
    int step = (int)num_or(root, "decoder_sparse_step", 1);
    json_t *only = json_object_get(root, "mlp_only_layers");
    for (int l = 0; l < c->L; l++) {
        bool in_only = false;
        size_t i;
        json_t *v;
        if (json_is_array(only))
            json_array_foreach(only, i, v) if (json_integer_value(v) == l) in_only = true;
        bool sparse = !in_only && c->E > 0 && (l + 1) % step == 0;
        c->dense[l] = !sparse;
    }
}

/* HF modeling_rope_utils: yarn's get_mscale (DeepSeek's yarn_get_mscale). */
static double get_mscale(double scale, double mscale)
{
    return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

/* find_correction_dim: the dimension index at which a frequency turns
 * num_rot times over max_pos positions. */
static double correction_dim(double num_rot, int dim, double base, double max_pos)
{
    return dim * log(max_pos / (num_rot * 2 * M_PI)) / (2 * log(base));
}

/* HF _compute_yarn_parameters with head_dim qk_rope_head_dim (the
 * DeepSeek configs set head_dim so), no partial rotary: the inverse
 * frequencies and the attention factor; and DeepseekV3Attention's softmax
 * scale correction yarn_get_mscale(factor, mscale_all_dim)^2. No
 * rope_scaling: plain RoPE. */
static void yarn_setup(ref_cfg_t *c, json_t *root)
{
    int dim = c->rdim;
    json_t *rs = json_object_get(root, "rope_scaling");
    if (!json_is_object(rs)) rs = json_object_get(root, "rope_parameters");
    const char *type = json_string_value(json_object_get(rs, "rope_type"));
    if (!type) type = json_string_value(json_object_get(rs, "type"));
    bool yarn = type && !strcmp(type, "yarn");
    double factor = yarn ? num_or(rs, "factor", 1) : 1;
    double mscale = yarn ? num_or(rs, "mscale", 0) : 0;
    double mscale_all = yarn ? num_or(rs, "mscale_all_dim", 0) : 0;
    c->rope_af = 1;
    c->mscale2 = 1;
    if (yarn) {
        json_t *af = json_object_get(rs, "attention_factor");
        c->rope_af = json_is_number(af)      ? json_number_value(af)
                     : mscale && mscale_all ? get_mscale(factor, mscale) /
                                                   get_mscale(factor, mscale_all)
                                             : get_mscale(factor, 1);
        if (mscale_all) c->mscale2 = pow(get_mscale(factor, mscale_all), 2);
    }
    double beta_fast = yarn ? num_or(rs, "beta_fast", 0) : 0;
    double beta_slow = yarn ? num_or(rs, "beta_slow", 0) : 0;
    if (!beta_fast) beta_fast = 32; /* HF: `or 32`, `or 1` */
    if (!beta_slow) beta_slow = 1;
    double orig = yarn ? num_or(rs, "original_max_position_embeddings", 0) : 0;
    double low = 0, high = 0;
    if (yarn) {
        cr_assert_gt(orig, 0, "reference: yarn without original_max_position_embeddings");
        low = correction_dim(beta_fast, dim, c->theta, orig);
        high = correction_dim(beta_slow, dim, c->theta, orig);
        if (bool_or(rs, "truncate", true)) {
            low = floor(low);
            high = ceil(high);
        }
        low = fmax(low, 0);
        high = fmin(high, dim - 1);
        if (low == high) high += 0.001; /* linear_ramp_factor's singularity guard */
    }
    for (int i = 0; i < dim / 2; i++) {
        double extra = 1 / pow(c->theta, 2.0 * i / dim), inter = extra / factor;
        double inv = extra;
        if (yarn) {
            double ramp = fmin(fmax((i - low) / (high - low), 0), 1);
            double extra_factor = 1 - ramp;
            inv = inter * (1 - extra_factor) + extra * extra_factor;
        }
        c->inv_freq[i] = (float)inv;
    }
}

/* Layer l dense: l < first_k_dense_replace (HF's whole rule), or not a
 * multiple of moe_layer_freq (DeepSeek's original code; every shipped
 * config has 1, which HF ignores). */
static void deepseek_dense_layers(ref_cfg_t *c, json_t *root)
{
    int first = (int)num_or(root, "first_k_dense_replace", 0);
    int freq = (int)num_or(root, "moe_layer_freq", 1);
    for (int l = 0; l < c->L; l++) c->dense[l] = l < first || l % freq != 0;
}

/* DeepseekV2Config / DeepseekV3Config (Kimi-K2 ships V3's code). */
static void ref_parse_deepseek(ref_cfg_t *c, json_t *root)
{
    bool v3 = c->fam != DEEPSEEK_V2;
    c->mla = true;
    c->V = int_req(root, "vocab_size");
    c->d = int_req(root, "hidden_size");
    c->L = int_req(root, "num_hidden_layers");
    c->H = int_req(root, "num_attention_heads");
    cr_assert_leq(c->L, MAX_LAYERS);
    c->Hkv = (int)num_or(root, "num_key_value_heads", c->H);
    cr_assert_eq(c->Hkv, c->H, "reference: MLA has a key per head");
    json_t *ql = json_object_get(root, "q_lora_rank");
    c->q_lora = json_is_integer(ql) ? (int)json_integer_value(ql) : 0; /* null: q_proj */
    c->kv_lora = int_req(root, "kv_lora_rank");
    c->nope = int_req(root, "qk_nope_head_dim");
    c->rdim = int_req(root, "qk_rope_head_dim");
    c->vhd = int_req(root, "v_head_dim");
    cr_assert_leq(c->rdim, MAX_ROPE);
    c->hd = c->nope + c->rdim;
    c->E = int_req(root, "n_routed_experts");
    c->k = int_req(root, "num_experts_per_tok");
    c->F = int_req(root, "moe_intermediate_size");
    c->Fd = int_req(root, "intermediate_size");
    c->Fs = (int)num_or(root, "n_shared_experts", v3 ? 1 : 2) * c->F;
    c->eps = num_or(root, "rms_norm_eps", 1e-6);
    c->theta = num_or(root, "rope_theta", 10000);
    c->tie = bool_or(root, "tie_word_embeddings", false);
    cr_assert(!bool_or(root, "attention_bias", false), "reference: no attention biases here");
    /* V2's RoPE is always the complex (interleaved) one; V3's by flag. */
    c->interleave = v3 ? bool_or(root, "rope_interleave", true) : true;
    yarn_setup(c, root);
    /* HF DeepseekV3Attention multiplies the scale by mscale^2 when
     * rope_scaling has mscale_all_dim; DeepseekV2Attention never does. */
    c->use_mscale2 = v3;
    c->attn_scale = 1 / sqrt(c->hd);
    /* V3: sigmoid, the bias, groups scored by their top two, renormalised
     * if norm_topk_prob (default true); V2: softmax, groups (max) only
     * for group_limited_greedy, never renormalised. */
    c->sigmoid = v3;
    c->choice_bias = v3;
    c->group_top2 = v3;
    const char *method = json_string_value(json_object_get(root, "topk_method"));
    c->grouped = v3 || (method && !strcmp(method, "group_limited_greedy"));
    c->n_group = (int)num_or(root, "n_group", 1);
    c->topk_group = (int)num_or(root, "topk_group", c->n_group);
    c->renorm = v3 && bool_or(root, "norm_topk_prob", true);
    c->routed_scale = num_or(root, "routed_scaling_factor", v3 ? 2.5 : 1.0);
    c->emb_mul = c->res_mul = c->logits_div = 1;
    deepseek_dense_layers(c, root);
    cr_assert_gt(c->E, 0);
}

/* GptOssConfig's reading: q/k/v/o biases with attention_bias (default
 * true), layer_types (default: even layers sliding), sliding_window,
 * swiglu_limit (default 7), YaRN from rope_scaling. */
static void ref_parse_gpt_oss(ref_cfg_t *c, json_t *root)
{
    c->V = int_req(root, "vocab_size");
    c->d = int_req(root, "hidden_size");
    c->L = int_req(root, "num_hidden_layers");
    c->H = int_req(root, "num_attention_heads");
    cr_assert_leq(c->L, MAX_LAYERS);
    c->Hkv = (int)num_or(root, "num_key_value_heads", 8);
    c->hd = (int)num_or(root, "head_dim", 64);
    c->E = int_req(root, "num_local_experts");
    c->k = int_req(root, "num_experts_per_tok");
    c->F = int_req(root, "intermediate_size");
    c->eps = num_or(root, "rms_norm_eps", 1e-5);
    c->theta = num_or(root, "rope_theta", 150000);
    c->tie = bool_or(root, "tie_word_embeddings", false);
    c->qkv_bias = c->o_bias = bool_or(root, "attention_bias", true);
    c->attn_scale = 1 / sqrt(c->hd);
    c->emb_mul = c->res_mul = c->logits_div = 1;
    c->window = (int)num_or(root, "sliding_window", 128);
    c->limit = num_or(root, "swiglu_limit", 7.0);
    json_t *lt = json_object_get(root, "layer_types");
    for (int l = 0; l < c->L; l++)
        c->sliding[l] = lt ? !strcmp(json_string_value(json_array_get(lt, l)), "sliding_attention")
                           : l % 2 == 0;
    c->rdim = c->hd;
    yarn_setup(c, root);
}

static void ref_parse(ref_cfg_t *c, const char *text)
{
    json_error_t err;
    json_t *root = json_loads(text, 0, &err);
    cr_assert(root, "reference: bad JSON: %s", err.text);
    memset(c, 0, sizeof *c);
    c->fam = ref_family(json_string_value(json_object_get(root, "model_type")));
    fam_t f = c->fam;
    if (f == DEEPSEEK_V2 || f == DEEPSEEK_V3 || f == KIMI_K2 || f == GPT_OSS) {
        (f == GPT_OSS ? ref_parse_gpt_oss : ref_parse_deepseek)(c, root);
        json_decref(root);
        return;
    }
    c->V = int_req(root, "vocab_size");
    c->d = int_req(root, "hidden_size");
    c->L = int_req(root, "num_hidden_layers");
    c->H = int_req(root, "num_attention_heads");
    cr_assert_leq(c->L, MAX_LAYERS);
    /* num_key_value_heads defaults: Mixtral 8, Qwen2-MoE 16, Qwen3-MoE 4,
     * OLMoE and Granite None -> H. */
    int hkv_def = f == MIXTRAL ? 8 : f == QWEN2_MOE ? 16 : f == QWEN3_MOE ? 4 : c->H;
    c->Hkv = (int)num_or(root, "num_key_value_heads", hkv_def);
    /* OLMoE always hidden / heads; the others getattr(head_dim). */
    c->hd = f == OLMOE ? c->d / c->H : (int)num_or(root, "head_dim", c->d / c->H);
    bool qwen = f == QWEN2_MOE || f == QWEN3_MOE;
    c->E = (int)num_or(root, f == MIXTRAL || f == GRANITEMOE ? "num_local_experts"
                                                             : "num_experts", -1);
    c->k = int_req(root, "num_experts_per_tok");
    c->F = int_req(root, qwen ? "moe_intermediate_size" : "intermediate_size");
    c->Fd = qwen ? int_req(root, "intermediate_size") : 0;
    c->Fs = f == QWEN2_MOE ? int_req(root, "shared_expert_intermediate_size") : 0;
    c->eps = num_or(root, "rms_norm_eps", f == MIXTRAL || f == OLMOE ? 1e-5 : 1e-6);
    c->theta = num_or(root, "rope_theta", f == MIXTRAL ? 1e6 : 1e4);
    c->tie = bool_or(root, "tie_word_embeddings", false);
    /* Mixtral and Granite always renormalise (Granite's softmax over the k
     * logits is the same thing); the others only if norm_topk_prob. */
    c->renorm = f == MIXTRAL || f == GRANITEMOE || bool_or(root, "norm_topk_prob", false);
    bool attn_bias = bool_or(root, "attention_bias", false);
    c->qkv_bias = f == QWEN2_MOE ? bool_or(root, "qkv_bias", true) : attn_bias && f != MIXTRAL;
    c->o_bias = f == QWEN2_MOE || f == MIXTRAL ? false : attn_bias;
    c->clip = f == OLMOE ? num_or(root, "clip_qkv", 0) : 0;
    bool granite = f == GRANITEMOE;
    c->emb_mul = granite ? num_or(root, "embedding_multiplier", 1) : 1;
    c->attn_scale = granite ? num_or(root, "attention_multiplier", 1) : 1 / sqrt(c->hd);
    c->res_mul = granite ? num_or(root, "residual_multiplier", 1) : 1;
    c->logits_div = granite ? num_or(root, "logits_scaling", 1) : 1;
    if (qwen) qwen_dense_layers(c, root);
    cr_assert_gt(c->E, 0);
    json_decref(root);
}

/* gpt-oss: sinks, sliding layers 0 and 3 of a window of 3 within the
 * 12-token prompt, q/k/v/o biases, the router and experts with biases,
 * YaRN (truncate false) and a SwiGLU limit the generated weights reach. */
static const char gpt_oss_json[] =
    "{\"model_type\":\"gpt_oss\",\"vocab_size\":64,\"hidden_size\":32,"
    "\"intermediate_size\":24,\"num_hidden_layers\":4,\"num_attention_heads\":4,"
    "\"num_key_value_heads\":2,\"head_dim\":8,\"num_local_experts\":6,"
    "\"num_experts_per_tok\":2,\"experts_per_token\":2,\"sliding_window\":3,"
    "\"layer_types\":[\"sliding_attention\",\"full_attention\",\"full_attention\","
    "\"sliding_attention\"],\"swiglu_limit\":0.3,\"attention_bias\":true,"
    "\"rms_norm_eps\":1e-5,\"rope_theta\":150000,\"max_position_embeddings\":256,"
    "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0,"
    "\"original_max_position_embeddings\":16,\"beta_fast\":32.0,\"beta_slow\":1.0,"
    "\"truncate\":false},\"tie_word_embeddings\":false,\"hidden_act\":\"silu\","
    "\"torch_dtype\":\"float32\"}";

/* ------------------------------------------------------------------ */
/* Weights by Hugging Face name.                                       */

typedef struct {
    const wts_t *w;
    int n;
    wts_tensor_t *t;
    bool *used; /* every tensor moemu lists must be read by the reference */
} names_t;

static void names_open(names_t *nm, const wts_t *w)
{
    nm->w = w;
    nm->n = wts_tensor_count(w);
    nm->t = calloc(nm->n, sizeof *nm->t);
    nm->used = calloc(nm->n, sizeof *nm->used);
    for (int i = 0; i < nm->n; i++) wts_tensor_at(w, i, &nm->t[i]);
}

static void names_close(names_t *nm)
{
    free(nm->t);
    free(nm->used);
}

/* The tensor named by the format, or NULL if moemu has none by that name. */
static const wts_tensor_t *find(names_t *nm, const char *fmt, va_list ap)
{
    char name[160];
    vsnprintf(name, sizeof name, fmt, ap);
    for (int i = 0; i < nm->n; i++)
        if (!strcmp(nm->t[i].name, name)) {
            nm->used[i] = true;
            return &nm->t[i];
        }
    return NULL;
}

static const wts_tensor_t *find_name(names_t *nm, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const wts_tensor_t *t = find(nm, fmt, ap);
    va_end(ap);
    return t;
}

/* A tensor that must exist with n elements (the shape HF gives it). */
static const float *need(names_t *nm, int64_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const wts_tensor_t *t = find(nm, fmt, ap);
    va_end(ap);
    char name[160];
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    cr_assert(t, "reference: tensor %s missing", name);
    int64_t have = 1;
    for (int i = 0; i < t->ndim; i++) have *= t->shape[i];
    cr_assert_eq(have, n, "reference: %s has %lld elements, HF %lld", name, (long long)have,
                 (long long)n);
    return t->data;
}

/* A tensor that must not exist (HF has no such parameter). */
static void absent(names_t *nm, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const wts_tensor_t *t = find(nm, fmt, ap);
    va_end(ap);
    cr_assert_null(t, "reference: moemu has tensor %s, which HF does not", t ? t->name : "");
}

/* ------------------------------------------------------------------ */
/* The math, in double.                                                */

static void matvec(double *y, const float *W, const double *x, int out, int in)
{
    for (int o = 0; o < out; o++) {
        double s = 0;
        for (int i = 0; i < in; i++) s += (double)W[(int64_t)o * in + i] * x[i];
        y[o] = s;
    }
}

static void add_bias(double *y, const float *b, int n)
{
    if (b)
        for (int i = 0; i < n; i++) y[i] += b[i];
}

/* HF RMSNorm: x * rsqrt(mean(x^2) + eps) * w. */
static void rmsnorm(double *y, const double *x, const float *w, int n, double eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double r = 1 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) y[i] = x[i] * r * w[i];
}

static double silu(double x)
{
    return x / (1 + exp(-x));
}

/* down(silu(gate x) * up x), the SwiGLU of every expert and MLP here. */
static void swiglu(double *out, const float *gate, const float *up, const float *down, int F,
                   int d, const double *x)
{
    double *g = malloc(sizeof(double) * F), *u = malloc(sizeof(double) * F);
    matvec(g, gate, x, F, d);
    matvec(u, up, x, F, d);
    for (int i = 0; i < F; i++) g[i] = silu(g[i]) * u[i];
    matvec(out, down, g, d, F);
    free(g);
    free(u);
}

/* Rotate-half RoPE on one head: pairs (i, i + hd/2) by angle
 * pos * theta^(-2i/hd), the angle computed in double and rounded to float,
 * cos and sin likewise (DESIGN.md). */
static void rope(double *v, int hd, int pos, double theta)
{
    int h2 = hd / 2;
    for (int i = 0; i < h2; i++) {
        float ang = (float)((double)pos * pow(theta, -2.0 * i / hd));
        double c = (float)cos((double)ang), s = (float)sin((double)ang);
        double x1 = v[i], x2 = v[i + h2];
        v[i] = x1 * c - x2 * s;
        v[i + h2] = x2 * c + x1 * s;
    }
}

/* Top-k of s (E values) into idx, ties to the lower index. */
static void topk(int *idx, const double *s, int E, int k)
{
    bool *taken = calloc(E, sizeof *taken);
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!taken[e] && (best < 0 || s[e] > s[best])) best = e;
        taken[best] = true;
        idx[j] = best;
    }
    free(taken);
}

/* ------------------------------------------------------------------ */
/* One decoder layer's pieces.                                         */

typedef struct {
    const ref_cfg_t *c;
    names_t *nm;
    int flips;
    int T;
    long clamped; /* q, k, v entries clip_qkv changed */
    long routed;  /* tokens routed by DeepSeek's grouped router */
    long hf_mask_differs; /* of those, where HF's 0.0 for excluded experts picks otherwise */
} ref_t;

/* Per-head RMSNorm over hd with one weight for all heads (Qwen3-MoE). */
static void head_norm(double *v, int heads, int hd, const float *w, double eps)
{
    for (int h = 0; h < heads; h++) rmsnorm(v + h * hd, v + h * hd, w, hd, eps);
}

static void clamp(ref_t *r, double *v, int n)
{
    double c = r->c->clip;
    for (int i = 0; i < n; i++)
        if (v[i] > c || v[i] < -c) {
            v[i] = v[i] > c ? c : -c;
            r->clamped++;
        }
}

static void rope_ds(const ref_t *r, double *v, int pos);

/* gpt-oss's rotate-half RoPE with YaRN (rope_ds's tables, not
 * interleaved); the others' plain RoPE. */
static void rope_at(const ref_t *r, double *v, int pos)
{
    if (r->c->fam == GPT_OSS) rope_ds(r, v, pos);
    else rope(v, r->c->hd, pos, r->c->theta);
}

/* q, k, v of every position from the normed input n (T x d). */
static void qkv(ref_t *r, int l, const double *n, double *q, double *k, double *v)
{
    const ref_cfg_t *c = r->c;
    int d = c->d, nq = c->H * c->hd, nk = c->Hkv * c->hd;
    const float *wq = need(r->nm, (int64_t)nq * d, "model.layers.%d.self_attn.q_proj.weight", l);
    const float *wk = need(r->nm, (int64_t)nk * d, "model.layers.%d.self_attn.k_proj.weight", l);
    const float *wv = need(r->nm, (int64_t)nk * d, "model.layers.%d.self_attn.v_proj.weight", l);
    const float *bq = NULL, *bk = NULL, *bv = NULL;
    if (c->qkv_bias) {
        bq = need(r->nm, nq, "model.layers.%d.self_attn.q_proj.bias", l);
        bk = need(r->nm, nk, "model.layers.%d.self_attn.k_proj.bias", l);
        bv = need(r->nm, nk, "model.layers.%d.self_attn.v_proj.bias", l);
    } else {
        absent(r->nm, "model.layers.%d.self_attn.q_proj.bias", l);
    }
    const float *qn = NULL, *kn = NULL;
    if (c->fam == QWEN3_MOE) {
        qn = need(r->nm, c->hd, "model.layers.%d.self_attn.q_norm.weight", l);
        kn = need(r->nm, c->hd, "model.layers.%d.self_attn.k_norm.weight", l);
    } else if (c->fam == OLMOE) {
        qn = need(r->nm, nq, "model.layers.%d.self_attn.q_norm.weight", l);
        kn = need(r->nm, nk, "model.layers.%d.self_attn.k_norm.weight", l);
    }
    for (int t = 0; t < r->T; t++) {
        double *qt = q + (int64_t)t * nq, *kt = k + (int64_t)t * nk, *vt = v + (int64_t)t * nk;
        matvec(qt, wq, n + (int64_t)t * d, nq, d);
        matvec(kt, wk, n + (int64_t)t * d, nk, d);
        matvec(vt, wv, n + (int64_t)t * d, nk, d);
        add_bias(qt, bq, nq);
        add_bias(kt, bk, nk);
        add_bias(vt, bv, nk);
        if (c->fam == QWEN3_MOE) { /* after the reshape to heads */
            head_norm(qt, c->H, c->hd, qn, c->eps);
            head_norm(kt, c->Hkv, c->hd, kn, c->eps);
        } else if (c->fam == OLMOE) { /* over the whole width, then clip */
            rmsnorm(qt, qt, qn, nq, c->eps);
            rmsnorm(kt, kt, kn, nk, c->eps);
            if (c->clip > 0 && !(r->flips & FLIP_CLIP)) {
                clamp(r, qt, nq);
                clamp(r, kt, nk);
                clamp(r, vt, nk);
            }
        }
        for (int h = 0; h < c->H; h++) rope_at(r, qt + h * c->hd, t);
        for (int h = 0; h < c->Hkv; h++) rope_at(r, kt + h * c->hd, t);
    }
}

/* DeepSeek's RoPE on one rope part v (rdim) at position pos, YaRN's
 * frequencies, cos and sin times the attention factor, all rounded to
 * float as HF's fp32 tables are. Interleaved: pair (2i, 2i+1) turned by
 * frequency i, as DeepSeek's complex form does; HF's
 * apply_rotary_pos_emb_interleave computes the same pairs and stores them
 * de-interleaved (x_2i first, then x_2i+1), for q and k alike, which no
 * dot product sees. Otherwise rotate-half: pair (i, i + rdim/2). */
static void rope_ds(const ref_t *r, double *v, int pos)
{
    const ref_cfg_t *c = r->c;
    int h2 = c->rdim / 2;
    bool inter = c->interleave != !!(r->flips & FLIP_INTERLEAVE);
    for (int i = 0; i < h2; i++) {
        float ang = (float)((double)pos * c->inv_freq[i]);
        double cs = (float)((float)cos((double)ang) * c->rope_af);
        double sn = (float)((float)sin((double)ang) * c->rope_af);
        int a = inter ? 2 * i : i, b = inter ? 2 * i + 1 : i + h2;
        double x1 = v[a], x2 = v[b];
        v[a] = x1 * cs - x2 * sn;
        v[b] = x2 * cs + x1 * sn;
    }
}

/* Multi-head latent attention as HF's DeepseekV2/V3Attention computes it
 * (naive: every head's key and value expanded from the latent):
 *   q = q_b(RMSNorm_1e-6(q_a x)) or q_proj x, per head [q_nope | q_pe];
 *   [c_kv | k_pe] = kv_a_proj_with_mqa x;
 *   kv_b(RMSNorm_1e-6(c_kv)) per head [k_nope | value];
 *   RoPE on q_pe and k_pe (one k_pe for all heads);
 *   softmax([q_nope|q_pe].[k_nope|k_pe] * scale) value, then o_proj. */
static void mla_attention(ref_t *r, int l, const double *n, double *out)
{
    const ref_cfg_t *c = r->c;
    int T = r->T, d = c->d, H = c->H, nope = c->nope, rd = c->rdim, vhd = c->vhd;
    int qk = nope + rd, kvw = nope + vhd, kva = c->kv_lora + rd;
    const char *p = "model.layers.%d.self_attn.%s";
    const float *wqa = NULL, *qan = NULL, *wqb = NULL, *wq = NULL;
    if (c->q_lora > 0) {
        wqa = need(r->nm, (int64_t)c->q_lora * d, p, l, "q_a_proj.weight");
        qan = need(r->nm, c->q_lora, p, l, "q_a_layernorm.weight");
        wqb = need(r->nm, (int64_t)H * qk * c->q_lora, p, l, "q_b_proj.weight");
        absent(r->nm, p, l, "q_proj.weight");
    } else {
        wq = need(r->nm, (int64_t)H * qk * d, p, l, "q_proj.weight");
        absent(r->nm, p, l, "q_a_proj.weight");
    }
    const float *wkva = need(r->nm, (int64_t)kva * d, p, l, "kv_a_proj_with_mqa.weight");
    const float *kvan = need(r->nm, c->kv_lora, p, l, "kv_a_layernorm.weight");
    const float *wkvb = need(r->nm, (int64_t)H * kvw * c->kv_lora, p, l, "kv_b_proj.weight");
    const float *wo = need(r->nm, (int64_t)d * H * vhd, p, l, "o_proj.weight");
    absent(r->nm, p, l, "kv_a_proj_with_mqa.bias");
    absent(r->nm, p, l, "o_proj.bias");

    double *q = malloc(sizeof(double) * T * H * qk), *k = malloc(sizeof(double) * T * H * qk);
    double *v = malloc(sizeof(double) * T * H * vhd);
    double *qa = malloc(sizeof(double) * (c->q_lora + 1)), *ckv = malloc(sizeof(double) * kva);
    double *kv = malloc(sizeof(double) * H * kvw);
    for (int t = 0; t < T; t++) {
        const double *x = n + (int64_t)t * d;
        double *qt = q + (int64_t)t * H * qk, *kt = k + (int64_t)t * H * qk;
        if (c->q_lora > 0) {
            matvec(qa, wqa, x, c->q_lora, d);
            rmsnorm(qa, qa, qan, c->q_lora, 1e-6);
            matvec(qt, wqb, qa, H * qk, c->q_lora);
        } else {
            matvec(qt, wq, x, H * qk, d);
        }
        matvec(ckv, wkva, x, kva, d);
        double *kpe = ckv + c->kv_lora; /* the rope part, before the norm */
        rope_ds(r, kpe, t);
        rmsnorm(ckv, ckv, kvan, c->kv_lora, 1e-6);
        matvec(kv, wkvb, ckv, H * kvw, c->kv_lora);
        for (int h = 0; h < H; h++) {
            rope_ds(r, qt + h * qk + nope, t);
            memcpy(kt + h * qk, kv + h * kvw, sizeof(double) * nope);
            memcpy(kt + h * qk + nope, kpe, sizeof(double) * rd);
            memcpy(v + ((int64_t)t * H + h) * vhd, kv + h * kvw + nope, sizeof(double) * vhd);
        }
    }
    bool mscale2 = c->use_mscale2 != !!(r->flips & FLIP_MSCALE);
    double scale = c->attn_scale * (mscale2 ? c->mscale2 : 1);
    double *a = calloc((size_t)T * H * vhd, sizeof(double)), *pr = malloc(sizeof(double) * T);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            const double *qh = q + ((int64_t)t * H + h) * qk;
            double mx = -INFINITY, sum = 0;
            for (int s = 0; s <= t; s++) {
                const double *kh = k + ((int64_t)s * H + h) * qk;
                double dot = 0;
                for (int i = 0; i < qk; i++) dot += qh[i] * kh[i];
                pr[s] = dot * scale;
                mx = fmax(mx, pr[s]);
            }
            for (int s = 0; s <= t; s++) sum += pr[s] = exp(pr[s] - mx);
            double *ah = a + ((int64_t)t * H + h) * vhd;
            for (int s = 0; s <= t; s++)
                for (int i = 0; i < vhd; i++) ah[i] += pr[s] / sum * v[((int64_t)s * H + h) * vhd + i];
        }
    for (int t = 0; t < T; t++) matvec(out + (int64_t)t * d, wo, a + (int64_t)t * H * vhd, d, H * vhd);
    free(q), free(k), free(v), free(qa), free(ckv), free(kv), free(a), free(pr);
}

/* Causal attention with GQA, o_proj, into out (T x d). */
static void attention(ref_t *r, int l, const double *n, double *out)
{
    const ref_cfg_t *c = r->c;
    if (c->mla) {
        mla_attention(r, l, n, out);
        return;
    }
    int T = r->T, hd = c->hd, nq = c->H * hd, nk = c->Hkv * hd, group = c->H / c->Hkv;
    double *q = malloc(sizeof(double) * T * nq), *k = malloc(sizeof(double) * T * nk);
    double *v = malloc(sizeof(double) * T * nk), *a = calloc((size_t)T * nq, sizeof(double));
    double *p = malloc(sizeof(double) * T);
    qkv(r, l, n, q, k, v);
    /* gpt-oss: HF's sliding mask (keys t - W < s <= t) and the sink's
     * logit joining each row's softmax, its share dropped */
    const float *sinks = c->fam == GPT_OSS ? need(r->nm, c->H, "model.layers.%d.self_attn.sinks", l)
                                           : NULL;
    if (r->flips & FLIP_SINKS) sinks = NULL;
    int first = c->fam == GPT_OSS && c->sliding[l] && !(r->flips & FLIP_WINDOW) ? c->window : 0;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < c->H; h++) {
            int g = h / group; /* repeat_kv: q head h reads kv head h / group */
            int s0 = first && t - first + 1 > 0 ? t - first + 1 : 0;
            double mx = sinks ? sinks[h] : -INFINITY, sum = 0;
            for (int s = s0; s <= t; s++) {
                double dot = 0;
                for (int i = 0; i < hd; i++) dot += q[t * nq + h * hd + i] * k[s * nk + g * hd + i];
                p[s] = dot * c->attn_scale;
                if (p[s] > mx) mx = p[s];
            }
            for (int s = s0; s <= t; s++) sum += p[s] = exp(p[s] - mx);
            if (sinks) sum += exp(sinks[h] - mx);
            for (int s = s0; s <= t; s++)
                for (int i = 0; i < hd; i++)
                    a[t * nq + h * hd + i] += p[s] / sum * v[s * nk + g * hd + i];
        }
    const float *wo = need(r->nm, (int64_t)c->d * nq, "model.layers.%d.self_attn.o_proj.weight", l);
    const float *bo = c->o_bias ? need(r->nm, c->d, "model.layers.%d.self_attn.o_proj.bias", l)
                                : NULL;
    if (!bo) absent(r->nm, "model.layers.%d.self_attn.o_proj.bias", l);
    for (int t = 0; t < T; t++) {
        matvec(out + (int64_t)t * c->d, wo, a + (int64_t)t * nq, c->d, nq);
        add_bias(out + (int64_t)t * c->d, bo, c->d);
    }
    free(q), free(k), free(v), free(a), free(p);
}

/* An expert's three matrices, by family. */
static void expert_w(ref_t *r, int l, int e, const float **g, const float **u, const float **dn)
{
    const ref_cfg_t *c = r->c;
    int64_t Fd = (int64_t)c->F * c->d;
    if (c->fam == GRANITEMOE) { /* input_linear [E,2F,d]: gate rows then up rows */
        const char *p = "model.layers.%d.block_sparse_moe.%s.weight";
        const float *in = need(r->nm, c->E * 2 * Fd, p, l, "input_linear");
        const float *o = need(r->nm, c->E * Fd, p, l, "output_linear");
        *g = in + e * 2 * Fd;
        *u = *g + Fd;
        *dn = o + e * Fd;
    } else if (c->fam == MIXTRAL) { /* w1 gate, w3 up, w2 down */
        const char *p = "model.layers.%d.block_sparse_moe.experts.%d.%s.weight";
        *g = need(r->nm, Fd, p, l, e, "w1");
        *u = need(r->nm, Fd, p, l, e, "w3");
        *dn = need(r->nm, Fd, p, l, e, "w2");
    } else {
        const char *p = "model.layers.%d.mlp.experts.%d.%s.weight";
        *g = need(r->nm, Fd, p, l, e, "gate_proj");
        *u = need(r->nm, Fd, p, l, e, "up_proj");
        *dn = need(r->nm, Fd, p, l, e, "down_proj");
    }
}

/* The k routing weights and experts of one token from its router logits. */
static void route(const ref_t *r, const double *logit, int *idx, double *wt)
{
    const ref_cfg_t *c = r->c;
    int E = c->E, k = c->k;
    bool renorm = c->renorm != !!(r->flips & FLIP_RENORM);
    double *p = malloc(sizeof(double) * E), mx = -INFINITY, sum = 0;
    if (c->fam == GRANITEMOE) { /* top-k of the logits, softmax over those k */
        topk(idx, logit, E, k);
        for (int j = 0; j < k; j++) mx = fmax(mx, logit[idx[j]]);
        for (int j = 0; j < k; j++) sum += wt[j] = exp(logit[idx[j]] - mx);
        for (int j = 0; j < k; j++) wt[j] /= sum;
    } else { /* softmax over all E, top-k, renormalise if asked */
        for (int e = 0; e < E; e++) mx = fmax(mx, logit[e]);
        for (int e = 0; e < E; e++) sum += p[e] = exp(logit[e] - mx);
        for (int e = 0; e < E; e++) p[e] /= sum;
        topk(idx, p, E, k);
        double s = 0;
        for (int j = 0; j < k; j++) s += wt[j] = p[idx[j]];
        if (renorm)
            for (int j = 0; j < k; j++) wt[j] /= s;
    }
    free(p);
}

/* Which experts DeepSeek's group limit leaves (allowed[e]) from the choice
 * scores: n_group groups of consecutive experts, each scored by the sum of
 * its two best (V3) or by its best (V2's group_limited_greedy); the
 * topk_group best groups stay, ties to the lower group. */
static void group_limit(const ref_cfg_t *c, const double *choice, bool *allowed)
{
    int G = c->n_group, per = c->E / G, top[2];
    double *gs = malloc(sizeof(double) * G);
    int *keep = malloc(sizeof(int) * c->topk_group);
    for (int g = 0; g < G; g++) {
        topk(top, choice + g * per, per, c->group_top2 ? 2 : 1);
        gs[g] = choice[g * per + top[0]] + (c->group_top2 ? choice[g * per + top[1]] : 0);
    }
    topk(keep, gs, G, c->topk_group);
    for (int e = 0; e < c->E; e++) allowed[e] = false;
    for (int j = 0; j < c->topk_group; j++)
        for (int i = 0; i < per; i++) allowed[keep[j] * per + i] = true;
    free(gs), free(keep);
}

/* DeepSeek's router (HF DeepseekV3TopkRouter, DeepseekV2Moe): scores by
 * sigmoid (V3) or softmax (V2) of the logits; the choice scores add
 * e_score_correction_bias (V3); the group limit excludes experts with
 * -inf (moemu's reading: HF fills 0.0, which differs only where a kept
 * expert's choice score is negative, counted in hf_mask_differs); the top
 * k of the choice scores; weights are the unbiased scores of the chosen,
 * renormalised (sum + 1e-20) if asked, times routed_scaling_factor. */
static void route_deepseek(ref_t *r, const double *logit, const float *bias, int *idx, double *wt)
{
    const ref_cfg_t *c = r->c;
    int E = c->E, k = c->k;
    double *p = malloc(sizeof(double) * E), *choice = malloc(sizeof(double) * E);
    double *hf = malloc(sizeof(double) * E);
    bool *allowed = malloc(sizeof(bool) * E);
    if (c->sigmoid) {
        for (int e = 0; e < E; e++) p[e] = 1 / (1 + exp(-logit[e]));
    } else {
        double mx = -INFINITY, sum = 0;
        for (int e = 0; e < E; e++) mx = fmax(mx, logit[e]);
        for (int e = 0; e < E; e++) sum += p[e] = exp(logit[e] - mx);
        for (int e = 0; e < E; e++) p[e] /= sum;
    }
    bool use_bias = bias && !(r->flips & FLIP_BIAS);
    for (int e = 0; e < E; e++) choice[e] = p[e] + (use_bias ? bias[e] : 0);
    if (c->grouped && !(r->flips & FLIP_GROUPS)) {
        group_limit(c, choice, allowed);
        for (int e = 0; e < E; e++) {
            hf[e] = allowed[e] ? choice[e] : 0.0;
            if (!allowed[e]) choice[e] = -INFINITY;
        }
        int *hf_idx = malloc(sizeof(int) * k);
        topk(hf_idx, hf, E, k);
        topk(idx, choice, E, k);
        bool same = true;
        for (int j = 0; j < k; j++) same = same && hf_idx[j] == idx[j];
        r->hf_mask_differs += !same;
        r->routed++;
        free(hf_idx);
    } else {
        topk(idx, choice, E, k);
    }
    double s = 0;
    for (int j = 0; j < k; j++) s += wt[j] = p[idx[j]];
    bool renorm = c->renorm != !!(r->flips & FLIP_RENORM);
    for (int j = 0; j < k; j++) wt[j] = (renorm ? wt[j] / (s + 1e-20) : wt[j]) * c->routed_scale;
    free(p), free(choice), free(hf), free(allowed);
}

/* DeepSeek's shared experts: one SwiGLU of n_shared_experts * F, added
 * unweighted into out. */
static void shared_experts(ref_t *r, int l, const double *x, double *out)
{
    const ref_cfg_t *c = r->c;
    int64_t n = (int64_t)c->Fs * c->d;
    const char *p = "model.layers.%d.mlp.shared_experts.%s.weight";
    const float *g = need(r->nm, n, p, l, "gate_proj"), *u = need(r->nm, n, p, l, "up_proj");
    const float *dn = need(r->nm, n, p, l, "down_proj");
    double *y = malloc(sizeof(double) * c->d);
    swiglu(y, g, u, dn, c->Fs, c->d, x);
    for (int i = 0; i < c->d; i++) out[i] += y[i];
    free(y);
}

/* Qwen2-MoE's shared expert, times sigmoid(w_sg . x), added into out. */
static void shared_expert(ref_t *r, int l, const double *x, double *out)
{
    const ref_cfg_t *c = r->c;
    int64_t n = (int64_t)c->Fs * c->d;
    const char *p = "model.layers.%d.mlp.shared_expert.%s.weight";
    const float *g = need(r->nm, n, p, l, "gate_proj"), *u = need(r->nm, n, p, l, "up_proj");
    const float *dn = need(r->nm, n, p, l, "down_proj");
    const float *wsg = need(r->nm, c->d, "model.layers.%d.mlp.shared_expert_gate.weight", l);
    double *y = malloc(sizeof(double) * c->d), z;
    swiglu(y, g, u, dn, c->Fs, c->d, x);
    matvec(&z, wsg, x, 1, c->d);
    double gate = r->flips & FLIP_SHARED_GATE ? 1 : 1 / (1 + exp(-z));
    for (int i = 0; i < c->d; i++) out[i] += gate * y[i];
    free(y);
}

static const char *router_name(fam_t f)
{
    return f == GRANITEMOE ? "model.layers.%d.block_sparse_moe.router.layer.weight"
           : f == MIXTRAL  ? "model.layers.%d.block_sparse_moe.gate.weight"
           : f == GPT_OSS  ? "model.layers.%d.mlp.router.weight"
                           : "model.layers.%d.mlp.gate.weight";
}

/* GptOssMLP on one token: router logits plus its bias, the top k, a
 * softmax over those k; each chosen expert: gate_up = x W_gu + b_gu
 * ([d, 2F], gate the even columns, up the odd), gate clamped from above
 * and up on both sides at swiglu_limit, (up + 1) * gate * sigmoid(1.702
 * gate), times W_down ([F, d]) plus b_down, weighted. */
static void moe_oss(ref_t *r, int l, const double *x, double *out)
{
    const ref_cfg_t *c = r->c;
    int E = c->E, k = c->k, d = c->d, F = c->F;
    const float *wg = need(r->nm, (int64_t)E * d, router_name(GPT_OSS), l);
    const float *bg = need(r->nm, E, "model.layers.%d.mlp.router.bias", l);
    const char *p = "model.layers.%d.mlp.experts.%s";
    const float *gu = need(r->nm, (int64_t)E * d * 2 * F, p, l, "gate_up_proj");
    const float *gub = need(r->nm, (int64_t)E * 2 * F, p, l, "gate_up_proj_bias");
    const float *dn = need(r->nm, (int64_t)E * F * d, p, l, "down_proj");
    const float *dnb = need(r->nm, (int64_t)E * d, p, l, "down_proj_bias");
    double *logit = malloc(sizeof(double) * E), *wt = malloc(sizeof(double) * k);
    double *h = malloc(sizeof(double) * F), mx = -INFINITY, sum = 0;
    int *idx = malloc(sizeof(int) * k);
    matvec(logit, wg, x, E, d);
    add_bias(logit, bg, E);
    topk(idx, logit, E, k);
    for (int j = 0; j < k; j++) mx = fmax(mx, logit[idx[j]]);
    for (int j = 0; j < k; j++) sum += wt[j] = exp(logit[idx[j]] - mx);
    bool plain = r->flips & FLIP_SWIGLU;
    memset(out, 0, sizeof(double) * d);
    for (int j = 0; j < k; j++) {
        int64_t e = idx[j];
        for (int f = 0; f < F; f++) {
            double g = gub[e * 2 * F + 2 * f], u = gub[e * 2 * F + 2 * f + 1];
            for (int i = 0; i < d; i++) {
                g += x[i] * gu[(e * d + i) * 2 * F + 2 * f];
                u += x[i] * gu[(e * d + i) * 2 * F + 2 * f + 1];
            }
            if (!plain) {
                g = fmin(g, c->limit);
                u = fmax(fmin(u, c->limit), -c->limit);
            }
            h[f] = (u + (plain ? 0 : 1)) * (g / (1 + exp(-1.702 * g)));
        }
        for (int i = 0; i < d; i++) {
            double y = dnb[e * d + i];
            for (int f = 0; f < F; f++) y += h[f] * dn[(e * F + f) * d + i];
            out[i] += wt[j] / sum * y;
        }
    }
    free(logit), free(wt), free(h), free(idx);
}

/* The MoE of one token x into out. */
static void moe(ref_t *r, int l, const double *x, double *out)
{
    const ref_cfg_t *c = r->c;
    const float *wg = need(r->nm, (int64_t)c->E * c->d, router_name(c->fam), l);
    double *logit = malloc(sizeof(double) * c->E), *wt = malloc(sizeof(double) * c->k);
    double *y = malloc(sizeof(double) * c->d);
    int *idx = malloc(sizeof(int) * c->k);
    matvec(logit, wg, x, c->E, c->d);
    const char *bias_name = "model.layers.%d.mlp.gate.e_score_correction_bias";
    if (c->mla) {
        const float *bias = c->choice_bias ? need(r->nm, c->E, bias_name, l) : NULL;
        if (!bias) absent(r->nm, bias_name, l);
        route_deepseek(r, logit, bias, idx, wt);
    } else {
        route(r, logit, idx, wt);
    }
    memset(out, 0, sizeof(double) * c->d);
    for (int j = 0; j < c->k; j++) {
        const float *g, *u, *dn;
        expert_w(r, l, idx[j], &g, &u, &dn);
        swiglu(y, g, u, dn, c->F, c->d, x);
        for (int i = 0; i < c->d; i++) out[i] += wt[j] * y[i];
    }
    if (c->fam == QWEN2_MOE) shared_expert(r, l, x, out);
    if (c->mla) shared_experts(r, l, x, out);
    free(logit), free(wt), free(y), free(idx);
}

/* Every tensor of layer l's MLP is read at least once (so the test sees
 * moemu list nothing HF lacks); then the MLP of each position. */
static void mlp(ref_t *r, int l, const double *n, double *out)
{
    const ref_cfg_t *c = r->c;
    int d = c->d;
    if (c->dense[l] && !(r->flips & FLIP_ALL_MOE)) { /* Qwen's or DeepSeek's dense MLP */
        int64_t nw = (int64_t)c->Fd * d;
        const float *g = need(r->nm, nw, "model.layers.%d.mlp.gate_proj.weight", l);
        const float *u = need(r->nm, nw, "model.layers.%d.mlp.up_proj.weight", l);
        const float *dn = need(r->nm, nw, "model.layers.%d.mlp.down_proj.weight", l);
        absent(r->nm, "model.layers.%d.mlp.gate.weight", l);
        for (int t = 0; t < r->T; t++) swiglu(out + t * d, g, u, dn, c->Fd, d, n + t * d);
        return;
    }
    if (c->fam == GPT_OSS) {
        for (int t = 0; t < r->T; t++) moe_oss(r, l, n + t * d, out + t * d);
        return;
    }
    for (int e = 0; e < c->E; e++) { /* mark the unrouted experts as known */
        const float *g, *u, *dn;
        expert_w(r, l, e, &g, &u, &dn);
    }
    for (int t = 0; t < r->T; t++) moe(r, l, n + t * d, out + t * d);
}

/* ------------------------------------------------------------------ */
/* The whole model: logits (T x V) of the tokens.                      */

typedef struct {
    long clamped;         /* q, k, v entries clip_qkv changed */
    long routed;          /* tokens through DeepSeek's group limit */
    long hf_mask_differs; /* of those, where HF's 0.0 fill picks other experts */
} ref_stats_t;

static double *ref_forward(const ref_cfg_t *c, const wts_t *w, const int *tok, int T, int flips,
                           ref_stats_t *stats)
{
    names_t nm;
    names_open(&nm, w);
    ref_t r = {.c = c, .nm = &nm, .flips = flips, .T = T};
    int d = c->d, V = c->V;
    double res_mul = flips & FLIP_RESIDUAL_MUL ? 1 : c->res_mul;
    double *x = malloc(sizeof(double) * T * d), *n = malloc(sizeof(double) * T * d);
    double *b = malloc(sizeof(double) * T * d);
    const float *emb = need(&nm, (int64_t)V * d, "model.embed_tokens.weight");
    for (int t = 0; t < T; t++)
        for (int i = 0; i < d; i++) x[t * d + i] = emb[(int64_t)tok[t] * d + i] * c->emb_mul;
    for (int l = 0; l < c->L; l++) {
        const float *n1 = need(&nm, d, "model.layers.%d.input_layernorm.weight", l);
        const float *n2 = need(&nm, d, "model.layers.%d.post_attention_layernorm.weight", l);
        for (int t = 0; t < T; t++) rmsnorm(n + t * d, x + t * d, n1, d, c->eps);
        attention(&r, l, n, b);
        for (int i = 0; i < T * d; i++) x[i] += b[i] * res_mul;
        for (int t = 0; t < T; t++) rmsnorm(n + t * d, x + t * d, n2, d, c->eps);
        mlp(&r, l, n, b);
        for (int i = 0; i < T * d; i++) x[i] += b[i] * res_mul;
    }
    const float *fn = need(&nm, d, "model.norm.weight");
    /* tied: the embedding itself, unscaled (Granite multiplies the
     * looked-up rows, not the weight) */
    const float *head = emb;
    if (c->tie) absent(&nm, "lm_head.weight");
    else head = need(&nm, (int64_t)V * d, "lm_head.weight");
    double *logits = malloc(sizeof(double) * T * V);
    for (int t = 0; t < T; t++) {
        rmsnorm(n + t * d, x + t * d, fn, d, c->eps);
        matvec(logits + (int64_t)t * V, head, n + t * d, V, d);
        for (int v = 0; v < V; v++) logits[(int64_t)t * V + v] /= c->logits_div;
    }
    for (int i = 0; i < nm.n; i++)
        cr_assert(nm.used[i], "moemu has tensor %s that the HF model does not read", nm.t[i].name);
    if (stats) *stats = (ref_stats_t){r.clamped, r.routed, r.hf_mask_differs};
    names_close(&nm);
    free(x), free(n), free(b);
    return logits;
}

/* ------------------------------------------------------------------ */
/* moemu's side and the comparison.                                    */

typedef struct {
    cfg_model_t cfg;
    ref_cfg_t ref;
    wts_t w;
    wl_t wl;
    model_out_t out;
    int T;
    unsigned dense_differ; /* layers dense in one of HF and moemu only */
    int base_flips;        /* FLIP_ALL_MOE when moemu has no dense layer HF has */
} run_t;

/* Whether moemu made the same layers dense as HF (a dense layer has no
 * router): the layers that differ, as a bit mask. If moemu made every
 * layer MoE, the logits are still compared with the reference taking every
 * layer as MoE, so the other features are checked and the figures show
 * whether that is the only difference. */
static unsigned dense_layout(run_t *r)
{
    names_t nm;
    names_open(&nm, &r->w);
    unsigned differ = 0;
    bool all_moe = true;
    for (int l = 0; l < r->ref.L; l++) {
        bool moemu_dense = !find_name(&nm, router_name(r->ref.fam), l);
        all_moe = all_moe && !moemu_dense;
        if (moemu_dense != r->ref.dense[l]) differ |= 1u << l;
    }
    if (differ && all_moe) r->base_flips = FLIP_ALL_MOE;
    names_close(&nm);
    return differ;
}

/* The generated e_score_correction_bias is small beside the sigmoid
 * scores; overwrite it (in moemu's tensors, which both sides read) with
 * values in [-0.3, 0.3] that reorder the experts, so the bias matters. */
static void boost_choice_bias(const wts_t *w)
{
    static const char suffix[] = "mlp.gate.e_score_correction_bias";
    for (int i = 0; i < wts_tensor_count(w); i++) {
        wts_tensor_t t;
        wts_tensor_at(w, i, &t);
        size_t n = strlen(t.name), m = sizeof suffix - 1;
        if (n < m || strcmp(t.name + n - m, suffix)) continue;
        for (int64_t e = 0; e < t.shape[0]; e++)
            t.data[e] = (float)(0.15 * (double)((e * 7 + i * 3) % 5 - 2));
    }
}

/* Build the config both ways, generate the weights and run moemu on one
 * device over one 12-token prompt, keeping every position's logits. */
static void run_moemu(run_t *r, const char *json, const char *label, uint64_t seed)
{
    memset(r, 0, sizeof *r);
    cr_assert_eq(cfg_parse(&r->cfg, json, label), MOEMU_OK, "%s", moemu_errmsg());
    ref_parse(&r->ref, json);
    cr_assert_eq(r->cfg.dtype, EMU_DTYPE_FP32, "%s: float32 weights expected", label);
    cr_assert_eq(wts_generate_all(&r->w, &r->cfg, seed), MOEMU_OK, "%s", moemu_errmsg());
    boost_choice_bias(&r->w);
    wl_opts_t wo = {.lens = "12", .decode = 2, .seed = seed + 1};
    cr_assert_eq(wl_make(&r->wl, &wo, &r->cfg), MOEMU_OK, "%s", moemu_errmsg());
    r->T = r->wl.len[0];
    r->dense_differ = dense_layout(r);
    runner_opts_t o;
    emu_hw_t hw;
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &hw), MOEMU_OK);
    runner_opts_one_device(&o, &hw, 1, 1);
    model_opts_t mo = {.prompt_logits = true};
    emu_cluster_t *cl;
    cr_assert_eq(runner_generate(&r->out, &cl, &r->w, &r->wl, &o, &mo), MOEMU_OK, "%s",
                 moemu_errmsg());
    emu_cluster_destroy(cl);
}

static void run_free(run_t *r)
{
    model_out_free(&r->out);
    wl_free(&r->wl);
    wts_free(&r->w);
}

typedef struct {
    double rel_l2;
    int argmax_differ; /* positions whose argmax differs */
    int first_differ;
} cmp_t;

static int argmax_f(const float *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

static int argmax_d(const double *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

/* Relative L2 over every prompt logit, and argmax agreement per position. */
static cmp_t compare(const run_t *r, const double *ref)
{
    int V = r->ref.V;
    cmp_t c = {0, 0, -1};
    double num = 0, den = 0;
    for (int t = 0; t < r->T; t++) {
        const float *m = r->out.prompt_logits + (int64_t)t * V;
        const double *x = ref + (int64_t)t * V;
        for (int v = 0; v < V; v++) {
            num += (m[v] - x[v]) * (m[v] - x[v]);
            den += x[v] * x[v];
        }
        if (argmax_f(m, V) != argmax_d(x, V)) {
            if (c.first_differ < 0) c.first_differ = t;
            c.argmax_differ++;
        }
    }
    c.rel_l2 = den > 0 ? sqrt(num / den) : INFINITY;
    return c;
}

static cmp_t check_against(const run_t *r, int flips, ref_stats_t *stats)
{
    double *ref = ref_forward(&r->ref, &r->w, r->wl.tokens, r->T, flips | r->base_flips, stats);
    cmp_t c = compare(r, ref);
    free(ref);
    return c;
}

/* On a disagreement: which single feature, switched in the reference,
 * makes it agree? Printed to tell the feature moemu computes otherwise. */
static void diagnose(const run_t *r, const char *label, int known)
{
    static const struct {
        int flip;
        const char *what;
    } f[] = {{FLIP_RENORM, "top-k renormalisation toggled"},
             {FLIP_SHARED_GATE, "shared expert ungated"},
             {FLIP_RESIDUAL_MUL, "residual_multiplier 1"},
             {FLIP_CLIP, "no clip_qkv"},
             {FLIP_ALL_MOE, "every layer MoE (no dense layers)"},
             {FLIP_BIAS, "no e_score_correction_bias"},
             {FLIP_MSCALE, "the softmax scale's mscale^2 toggled"},
             {FLIP_INTERLEAVE, "RoPE pairs toggled (interleaved / halves)"},
             {FLIP_GROUPS, "no group limit"}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (f[i].flip == FLIP_ALL_MOE && !r->dense_differ) continue; /* HF's dense layers are moemu's */
        cmp_t c = check_against(r, f[i].flip ^ known, NULL);
        printf("reference %s, %s: rel L2 %.3g, argmax differs at %d positions\n", label,
               f[i].what, c.rel_l2, c.argmax_differ);
    }
}

/* The agreement test of one family. A known divergence from HF (known:
 * the flips that make the reference compute what moemu does instead,
 * why: which) is pinned both ways: HF's own reading must disagree with
 * moemu, so the test says when moemu changes, and the reference with
 * those flips must agree, so everything else is still checked. */
static void agree_known(const char *json, const char *label, uint64_t seed, int known,
                        const char *why)
{
    run_t r;
    run_moemu(&r, json, label, seed);
    if (known) {
        cmp_t hf = check_against(&r, 0, NULL);
        printf("reference %s: KNOWN DIVERGENCE from HF: %s; rel L2 %.3g vs HF's reading\n",
               label, why, hf.rel_l2);
        cr_expect_gt(hf.rel_l2, 1e-3,
                     "%s: moemu now agrees with HF (rel L2 %.3g) where it did not (%s): "
                     "drop the known divergence",
                     label, hf.rel_l2, why);
    }
    for (int l = 0; l < r.ref.L; l++)
        cr_expect(!(r.dense_differ >> l & 1), "%s: layer %d is %s in HF, %s in moemu", label, l,
                  r.ref.dense[l] ? "dense" : "MoE", r.ref.dense[l] ? "MoE" : "dense");
    if (r.base_flips)
        printf("reference %s: moemu has no dense layer; compared with every layer MoE\n", label);
    ref_stats_t st = {0};
    cmp_t c = check_against(&r, known, &st);
    cr_log_info("%s: rel L2 %.3g over %d positions x %d logits", label, c.rel_l2, r.T, r.ref.V);
    printf("reference %s: rel L2 %.3g\n", label, c.rel_l2);
    cr_expect_leq(c.rel_l2, 1e-5, "%s: rel L2 %.3g vs the HF reference", label, c.rel_l2);
    cr_expect_eq(c.argmax_differ, 0, "%s: argmax differs at %d positions, first %d", label,
                 c.argmax_differ, c.first_differ);
    if (c.rel_l2 > 1e-5 || c.argmax_differ) diagnose(&r, label, known);
    if (r.ref.clip > 0) printf("reference %s: clip_qkv clamped %ld values\n", label, st.clamped);
    if (r.ref.clip > 0)
        cr_expect_gt(st.clamped, 0, "%s: clip_qkv %g clamps nothing", label, r.ref.clip);
    if (st.routed)
        printf("reference %s: HF's 0.0 fill for excluded groups would route %ld of %ld tokens "
               "otherwise\n", label, st.hf_mask_differs, st.routed);
    run_free(&r);
}

static void agree(const char *json, const char *label, uint64_t seed)
{
    agree_known(json, label, seed, 0, NULL);
}

Test(reference, mixtral) { agree(mixtral_json, "mixtral", 7); }
Test(reference, qwen2_moe) { agree(qwen2_json, "qwen2_moe", 7); }
Test(reference, qwen3_moe) { agree(qwen3_json, "qwen3_moe", 7); }
Test(reference, olmoe) { agree(olmoe_json, "olmoe", 7); }
Test(reference, granitemoe) { agree(granite_json, "granitemoe", 7); }
Test(reference, deepseek_v3) { agree(dsv3_json, "deepseek_v3", 7); }
/* HF's DeepseekV2Attention keeps the softmax scale at qk_head_dim^-0.5;
 * DeepSeek's own V2 code (the Hub's modeling_deepseek.py) and HF's
 * DeepseekV3Attention multiply it by yarn_get_mscale(factor,
 * mscale_all_dim)^2, and so does moemu for V2. */
Test(reference, deepseek_v2)
{
    agree_known(dsv2_json, "deepseek_v2", 7, FLIP_MSCALE,
                "moemu multiplies V2's softmax scale by mscale^2 (DeepSeek's code), "
                "HF's DeepseekV2Attention does not");
}
Test(reference, kimi_k2) { agree(kimi_json, "kimi_k2", 7); }
Test(reference, gpt_oss) { agree(gpt_oss_json, "gpt_oss", 7); }

/* The check has teeth: the reference with one feature switched off must
 * disagree with moemu by far more than the tolerance. */
static void teeth(const char *json, const char *label, int flips, const char *feature)
{
    run_t r;
    run_moemu(&r, json, label, 7);
    cmp_t c = check_against(&r, flips, NULL);
    printf("reference %s with %s: rel L2 %.3g\n", label, feature, c.rel_l2);
    cr_expect_gt(c.rel_l2, 1e-3, "%s: the reference with %s still agrees (rel L2 %.3g)",
                 label, feature, c.rel_l2);
    run_free(&r);
}

Test(reference, teeth_norm_topk_prob)
{
    teeth(qwen2_json, "qwen2_moe", FLIP_RENORM, "the top-k renormalised");
}
Test(reference, teeth_norm_topk_prob_true)
{
    teeth(qwen3_json, "qwen3_moe", FLIP_RENORM, "the top-k not renormalised");
}
Test(reference, teeth_shared_gate)
{
    teeth(qwen2_json, "qwen2_moe", FLIP_SHARED_GATE, "the shared expert ungated");
}
Test(reference, teeth_residual_multiplier)
{
    teeth(granite_json, "granitemoe", FLIP_RESIDUAL_MUL, "residual_multiplier 1");
}
Test(reference, teeth_clip_qkv)
{
    teeth(olmoe_json, "olmoe", FLIP_CLIP, "clip_qkv off");
}
Test(reference, teeth_choice_bias)
{
    teeth(dsv3_json, "deepseek_v3", FLIP_BIAS, "no e_score_correction_bias");
}
Test(reference, teeth_mscale)
{
    teeth(dsv3_json, "deepseek_v3", FLIP_MSCALE, "no mscale^2 in the softmax scale");
}
Test(reference, teeth_rope_interleave)
{
    teeth(dsv3_json, "deepseek_v3", FLIP_INTERLEAVE, "rotate-half RoPE pairs");
}
Test(reference, teeth_group_limit_v3)
{
    teeth(dsv3_json, "deepseek_v3", FLIP_GROUPS, "no group limit");
}
Test(reference, teeth_group_limit_v2)
{
    teeth(dsv2_json, "deepseek_v2", FLIP_GROUPS | FLIP_MSCALE, "no group limit");
}
Test(reference, teeth_sinks) { teeth(gpt_oss_json, "gpt_oss", FLIP_SINKS, "no attention sinks"); }
Test(reference, teeth_sliding_window)
{
    teeth(gpt_oss_json, "gpt_oss", FLIP_WINDOW, "no sliding windows");
}
Test(reference, teeth_clamped_swiglu)
{
    teeth(gpt_oss_json, "gpt_oss", FLIP_SWIGLU, "a SwiGLU without clamps or + 1");
}
