/* config: the model configuration, from Hugging Face config.json form or a
 * built-in name, and the figures derived from it (parameters, bytes,
 * FLOPs per token). */
#ifndef MOEMU_CONFIG_H
#define MOEMU_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "emu/emu.h"
#include "layers/layers.h"

typedef struct {
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

/* Fill cfg from a built-in name ("tiny", "moe-10b-plan", ...) or else from a
 * config.json path. Unknown keys are ignored except those that would change
 * the semantics, which are refused by name; wrong types and impossible
 * values are MOEMU_ERR_INVALID with a message naming the key. */
moemu_status_t cfg_load(cfg_model_t *cfg, const char *name_or_path);
/* The same from a JSON text (a config.json's contents). */
moemu_status_t cfg_parse(cfg_model_t *cfg, const char *json_text,
                         const char *label);
/* Check the cross-key rules (Hkv divides H, k <= E, ...). */
moemu_status_t cfg_validate(const cfg_model_t *cfg);

/* Derived figures. Parameters are exact element counts. */
typedef struct {
    int64_t total;           /* every weight, lm_head counted once if tied */
    int64_t active_per_token;/* embedding row excluded: attention, norms,
                                router, k routed + shared experts, lm_head */
    int64_t embedding, attention, router, experts, shared, norms, lm_head;
    double weight_bytes;     /* total * bytes of the emulated dtype */
    double flops_per_token;  /* forward matmul FLOPs of one token at
                                context length 0 (attention scores excluded) */
    double attn_flops_per_pair; /* per visible (query, key) pair, all heads */
} cfg_figures_t;

void cfg_figures(const cfg_model_t *cfg, cfg_figures_t *out);

#endif
