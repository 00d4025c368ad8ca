/* Qwen2-MoE and Qwen3-MoE (modeling_qwen2_moe.py, modeling_qwen3_moe.py):
 * Qwen2-MoE has q/k/v biases and a shared expert scaled by a sigmoid
 * gate; Qwen3-MoE normalises each query and key head; both may have dense
 * layers (decoder_sparse_step, mlp_only_layers). The config readers are
 * in engine/models/config.c. */
#include "engine/models/family.h"

#define LAYER "model.layers.%d."
#define QWEN_NAMES(...)                                                                   \
    {.embed = "model.embed_tokens.weight",                                                \
     .final_norm = "model.norm.weight",                                                   \
     .lm_head = "lm_head.weight",                                                         \
     .attn_norm = LAYER "input_layernorm.weight",                                         \
     .q = LAYER "self_attn.q_proj.weight",                                                \
     .k = LAYER "self_attn.k_proj.weight",                                                \
     .v = LAYER "self_attn.v_proj.weight",                                                \
     .o = LAYER "self_attn.o_proj.weight",                                                \
     .bq = LAYER "self_attn.q_proj.bias",                                                 \
     .bk = LAYER "self_attn.k_proj.bias",                                                 \
     .bv = LAYER "self_attn.v_proj.bias",                                                 \
     .bo = LAYER "self_attn.o_proj.bias",                                                 \
     .mlp_norm = LAYER "post_attention_layernorm.weight",                                 \
     .router = LAYER "mlp.gate.weight",                                                   \
     .e1 = LAYER "mlp.experts.%d.gate_proj.weight",                                       \
     .e2 = LAYER "mlp.experts.%d.down_proj.weight",                                       \
     .e3 = LAYER "mlp.experts.%d.up_proj.weight",                                         \
     .d1 = LAYER "mlp.gate_proj.weight",                                                  \
     .d2 = LAYER "mlp.down_proj.weight",                                                  \
     .d3 = LAYER "mlp.up_proj.weight",                                                    \
     __VA_ARGS__}

static const wts_names_t qwen2_names =
    QWEN_NAMES(.s1 = LAYER "mlp.shared_expert.gate_proj.weight",
               .s2 = LAYER "mlp.shared_expert.down_proj.weight",
               .s3 = LAYER "mlp.shared_expert.up_proj.weight",
               .sgate = LAYER "mlp.shared_expert_gate.weight");

static const wts_names_t qwen3_names = QWEN_NAMES(.qn = LAYER "self_attn.q_norm.weight",
                                                  .kn = LAYER "self_attn.k_norm.weight");

const model_family_t family_qwen2_moe = {
    .model_type = "qwen2_moe",
    .config = cfg_read_qwen2_moe,
    .dims = dec_dims,
    .names = &qwen2_names,
    .place = dec_place,
    .figures = cfg_figures,
    .held = dec_held,
    .layer = dec_layer,
};

const model_family_t family_qwen3_moe = {
    .model_type = "qwen3_moe",
    .config = cfg_read_qwen3_moe,
    .dims = dec_dims,
    .names = &qwen3_names,
    .place = dec_place,
    .figures = cfg_figures,
    .held = dec_held,
    .layer = dec_layer,
};
