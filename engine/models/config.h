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
} cfg_model_t;

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
    int64_t embedding, attention, router, experts, shared, norms, lm_head;
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
