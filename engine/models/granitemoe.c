/* GraniteMoE (modeling_granitemoe.py): embedding, residual, attention and
 * logit multipliers; a router that takes the top k of the logits, then a
 * softmax over those k; every expert in two fused tensors. The config
 * reader is in engine/models/config.c. */
#include "engine/models/family.h"

#define LAYER "model.layers.%d."
static const wts_names_t granite_names = {
    .embed = "model.embed_tokens.weight",
    .final_norm = "model.norm.weight",
    .lm_head = "lm_head.weight",
    .attn_norm = LAYER "input_layernorm.weight",
    .q = LAYER "self_attn.q_proj.weight",
    .k = LAYER "self_attn.k_proj.weight",
    .v = LAYER "self_attn.v_proj.weight",
    .o = LAYER "self_attn.o_proj.weight",
    .bq = LAYER "self_attn.q_proj.bias",
    .bk = LAYER "self_attn.k_proj.bias",
    .bv = LAYER "self_attn.v_proj.bias",
    .bo = LAYER "self_attn.o_proj.bias",
    .mlp_norm = LAYER "post_attention_layernorm.weight",
    .router = LAYER "block_sparse_moe.router.layer.weight",
    .fused_in = LAYER "block_sparse_moe.input_linear.weight",
    .fused_out = LAYER "block_sparse_moe.output_linear.weight",
};

const model_family_t family_granitemoe = {
    .model_type = "granitemoe",
    .config = cfg_read_granitemoe,
    .dims = dec_dims,
    .names = &granite_names,
    .place = dec_place,
    .figures = cfg_figures,
    .held = dec_held,
    .layer = dec_layer,
};
