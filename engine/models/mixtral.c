/* Mixtral (modeling_mixtral.py) with moemu's extensions: capacity factor,
 * shared experts, gelu experts (DESIGN.md, "Model semantics"). */
#include "engine/models/family.h"

#define LAYER "model.layers.%d."
static const wts_names_t mixtral_names = {
    .embed = "model.embed_tokens.weight",
    .final_norm = "model.norm.weight",
    .lm_head = "lm_head.weight",
    .attn_norm = LAYER "input_layernorm.weight",
    .q = LAYER "self_attn.q_proj.weight",
    .k = LAYER "self_attn.k_proj.weight",
    .v = LAYER "self_attn.v_proj.weight",
    .o = LAYER "self_attn.o_proj.weight",
    .mlp_norm = LAYER "post_attention_layernorm.weight",
    .router = LAYER "block_sparse_moe.gate.weight",
    .e1 = LAYER "block_sparse_moe.experts.%d.w1.weight",
    .e2 = LAYER "block_sparse_moe.experts.%d.w2.weight",
    .e3 = LAYER "block_sparse_moe.experts.%d.w3.weight",
    .s1 = LAYER "block_sparse_moe.shared_experts.%d.w1.weight",
    .s2 = LAYER "block_sparse_moe.shared_experts.%d.w2.weight",
    .s3 = LAYER "block_sparse_moe.shared_experts.%d.w3.weight",
};

const model_family_t family_mixtral = {
    .model_type = "mixtral",
    .config = cfg_read_mixtral,
    .dims = dec_dims,
    .names = &mixtral_names,
    .place = dec_place,
    .figures = cfg_figures,
    .held = dec_held,
    .layer = dec_layer,
};
