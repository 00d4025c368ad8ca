/* config: the model configuration, from Hugging Face config.json form or a
 * built-in name, and the figures derived from it (parameters, bytes,
 * FLOPs per token). */
#ifndef MOEMU_CONFIG_H
#define MOEMU_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "emu/emu.h"
#include "layers/layers.h"

typedef struct model_family model_family_t; /* engine/models/family.h */

/* Dense layers are kept as bits: a config that has any may have at most
 * this many layers (DeepSeek-V3 has 61, Qwen3-235B 94). */
#define CFG_MAX_LAYERS 1024

typedef struct {
    const model_family_t *family; /* from model_type; Mixtral without it */
    char name[64];            /* built-in name or the file's base name */
    int vocab_size;           /* V */
    int hidden_size;          /* d */
    int intermediate_size;    /* F: each routed expert's intermediate size */
    int num_hidden_layers;    /* L */
    int num_attention_heads;  /* H */
    int num_key_value_heads;  /* Hkv, divides H */
    int head_dim;             /* hd, even; default d / H */
    int num_local_experts;    /* E */
    int num_experts_per_tok;  /* k, 1 <= k <= E */
    int max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;
    double capacity_factor;   /* 0 = dropless */
    layer_act_t hidden_act;   /* silu (SwiGLU) or gelu (erf, two matrices) */
    bool tie_word_embeddings;
    emu_dtype_t dtype;        /* emulated storage: fp16, bf16 or fp32 */
    int num_shared_experts;
    int shared_expert_intermediate_size; /* per shared expert; default F */
    /* The Hugging Face families' variations; zero is Mixtral's function
     * except for the multipliers, 1 there (docs/semantics.md). */
    bool qkv_bias, o_bias;    /* biases on q, k, v; on o */
    layer_qknorm_t qk_norm;   /* query/key RMSNorm: by head or by width */
    double clip_qkv;          /* q, k, v clamped to [-clip, clip]; 0: none */
    layer_route_t router;     /* how logits become k weights */
    /* DeepSeek's grouped router (router LAYER_ROUTE_GROUPED) */
    bool gate_sigmoid, gate_norm, gate_top2, gate_bias; /* gate_bias: e_score_correction_bias */
    int n_group, topk_group;
    double routed_scaling_factor;
    /* Multi-head latent attention (DeepSeek): kv_lora_rank > 0; head_dim is
     * then qk_nope_head_dim + qk_rope_head_dim */
    int q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    int num_nextn_predict_layers; /* multi-token prediction layers: not loaded */
    int fp8_block_r, fp8_block_c; /* an FP8 checkpoint's scale blocks (0: none):
                                     its weights are stored in FP8 e4m3 */
    /* RoPE: pairs (2i, 2i+1) instead of halves; YaRN when yarn_factor > 0
     * (rope_scaling's factor, original_max_position_embeddings, beta_fast,
     * beta_slow, mscale, mscale_all_dim, truncate, attention_factor) */
    bool rope_interleave, yarn_truncate;
    double yarn_factor, yarn_original_max, yarn_beta_fast, yarn_beta_slow, yarn_mscale,
        yarn_mscale_all_dim, yarn_attention_factor;
    bool shared_gate;         /* the shared experts' sum times sigmoid(g . x) */
    int dense_intermediate_size; /* F of a dense layer's MLP */
    int num_dense_layers;     /* layers whose MLP is dense (bits in dense) */
    uint8_t dense[CFG_MAX_LAYERS / 8];
    double embedding_multiplier, residual_multiplier, logits_scaling;
    double attention_multiplier; /* the attention scale; 0: 1 / sqrt(head_dim) */
    /* gpt-oss: attention sinks, sliding-window layers (bits in sliding),
     * biased router and experts (hidden_act LAYER_ACT_SWIGLU_OAI), MXFP4
     * experts */
    bool sinks, expert_bias, mxfp4;
    int sliding_window, num_sliding_layers;
    uint8_t sliding[CFG_MAX_LAYERS / 8];
    double swiglu_limit;
} cfg_model_t;

/* Bytes of one stored weight: FP8 e4m3 with a 4-byte scale per block for
 * an FP8 checkpoint, else the dtype's. */
static inline double cfg_weight_size(const cfg_model_t *c)
{
    if (c->fp8_block_r > 0 && c->fp8_block_c > 0)
        return 1.0 + 4.0 / ((double)c->fp8_block_r * c->fp8_block_c);
    return (double)emu_dtype_size(c->dtype);
}

/* Store the weights in FP8 e4m3 with a scale per 128 x 128 block (the
 * weight_block_size of DeepSeek-V3 and the Qwen3 FP8 releases) unless the
 * config already gives its blocks. */
static inline void cfg_store_fp8(cfg_model_t *c)
{
    if (c->fp8_block_r > 0 && c->fp8_block_c > 0) return;
    c->fp8_block_r = c->fp8_block_c = 128;
}

/* Store every weight in the dtype (no FP8, no MXFP4): what a model
 * would need unquantized. */
static inline void cfg_store_dtype(cfg_model_t *c)
{
    c->fp8_block_r = c->fp8_block_c = 0;
    c->mxfp4 = false;
}

/* Whether layer l attends within a sliding window. */
static inline bool cfg_layer_sliding(const cfg_model_t *c, int l)
{
    return c->num_sliding_layers > 0 && l < CFG_MAX_LAYERS && (c->sliding[l / 8] >> (l % 8) & 1);
}

/* Bytes of one stored routed-expert weight: MXFP4 is 4-bit e2m1 values
 * with an 8-bit e8m0 scale per 32 (4.25 bits), else cfg_weight_size. */
static inline double cfg_expert_weight_size(const cfg_model_t *c)
{
    return c->mxfp4 ? 4.25 / 8 : cfg_weight_size(c);
}

/* Whether layer l's MLP is dense (no router, no experts). */
static inline bool cfg_layer_dense(const cfg_model_t *c, int l)
{
    return c->num_dense_layers > 0 && l < CFG_MAX_LAYERS && (c->dense[l / 8] >> (l % 8) & 1);
}
/* Layers whose MLP is a mixture of experts. */
static inline int cfg_moe_layers(const cfg_model_t *c)
{
    return c->num_hidden_layers - c->num_dense_layers;
}

/* Names of the built-in models, NULL-terminated. */
extern const char *const cfg_builtin_names[];

/* Fill cfg from a built-in name ("tiny", "moe-10b-plan", ...; an exact
 * match is tried first) or else from a config.json path; cfg->name is the
 * built-in name or the file's base name without ".json". Unknown keys are
 * ignored except those that would change the semantics, which are refused by
 * name; wrong types and impossible values are MOEMU_ERR_INVALID with a
 * message naming the key; an unreadable file is MOEMU_ERR_IO, malformed JSON
 * MOEMU_ERR_FORMAT. On error cfg is left untouched. docs/config.md lists
 * every key. */
moemu_status_t cfg_load(cfg_model_t *cfg, const char *name_or_path);
/* The same from a JSON text (a config.json's contents). label (a path or a
 * model name) starts every error message and gives cfg->name. */
moemu_status_t cfg_parse(cfg_model_t *cfg, const char *json_text,
                         const char *label);
/* Mixtral's reading of a config.json object (the family table's config
 * entry): its keys, the refused ones, the defaults and cfg_validate. */
moemu_status_t cfg_read_mixtral(cfg_model_t *out, json_t *root, const char *label);
/* The same for the Hugging Face families: their keys and the defaults of
 * their configuration classes (docs/config.md lists what each reads and
 * refuses). */
moemu_status_t cfg_read_qwen2_moe(cfg_model_t *out, json_t *root, const char *label);
moemu_status_t cfg_read_qwen3_moe(cfg_model_t *out, json_t *root, const char *label);
moemu_status_t cfg_read_olmoe(cfg_model_t *out, json_t *root, const char *label);
moemu_status_t cfg_read_granitemoe(cfg_model_t *out, json_t *root, const char *label);
moemu_status_t cfg_read_deepseek_v2(cfg_model_t *out, json_t *root, const char *label);
moemu_status_t cfg_read_deepseek_v3(cfg_model_t *out, json_t *root, const char *label);
moemu_status_t cfg_read_kimi_k2(cfg_model_t *out, json_t *root, const char *label);
moemu_status_t cfg_read_gpt_oss(cfg_model_t *out, json_t *root, const char *label);
/* Check every rule on the fields, one key and cross-key (sizes positive,
 * Hkv divides H, head_dim even, 1 <= k <= E, parameter counts fit int64,
 * ...); cfg_parse and cfg_load call it. Every broken rule is reported,
 * "; "-joined, in one message that starts with cfg->name. */
moemu_status_t cfg_validate(const cfg_model_t *cfg);

/* Derived figures. Parameters are exact element counts, summed over all
 * layers; a routed or shared expert has 3 matrices (w1, w2, w3) with silu,
 * 2 (w1, w2) with gelu. */
typedef struct {
    int64_t total;           /* every weight, the embedding counted once if
                                tied (then lm_head is 0) */
    int64_t active_per_token;/* weights one token multiplies by: attention,
                                router, k routed + shared experts, norms and
                                V*d for the output projection (even if tied);
                                the embedding lookup is excluded */
    int64_t active_card;     /* as model cards count active parameters:
                                every tensor a token touches, the whole
                                embedding matrix included (total minus the
                                routed experts it does not choose) */
    int64_t embedding, attention, router, experts, shared, dense, norms, lm_head;
    double weight_bytes;     /* total * bytes of the emulated dtype */
    double flops_per_token;  /* 2 * the active matmul weights (attention
                                projections, router, k routed + shared
                                experts, output projection): one token at
                                context length 0; attention scores, norms,
                                RoPE, softmax and activations excluded */
    double attn_flops_per_pair; /* 4 * H * hd * L: QK^T and PV of one visible
                                   (query, key) pair, all heads, all layers */
} cfg_figures_t;

/* cfg must be valid (cfg_validate). */
void cfg_figures(const cfg_model_t *cfg, cfg_figures_t *out);

#endif
